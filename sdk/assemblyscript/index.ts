// @weir/filter: write Weir proxy filters in AssemblyScript. See README.md.

export { Action, ActionKind, ConfigResult, Header, LocalResponse, Phases } from "./assembly/action";
export { Hash, HmacKey, MAX_CRYPTO_KEYS, MAX_KEY_BYTES, SignatureAlgorithm, VerifyingKey, crypto } from "./assembly/crypto";
export { decodeUtf8, decodeUtf8Lossy, encodeUtf8, isValidUtf8 } from "./assembly/bytes";
export { ConfigReader } from "./assembly/config";
export { HostError, HostErrorKind, Result } from "./assembly/errors";
export { Filter, FilterBase, NoContext, registerFilter } from "./assembly/filter";
export { BucketResult, CalloutResponse, KvEntry, Level, callout, clock, kv, log, metrics, span } from "./assembly/host";
export { Body, BodyKind, Headers, LogView, Request, Response } from "./assembly/http";
export { debugQuote, isFramingHeader, isHeaderName } from "./assembly/validate";
export { JSON, JsonKind, JsonMember, JsonParseResult, JsonValue, TextBuffer } from "./assembly/json";

// Linked in for the asc options in asconfig.json (`--use abort=...`) and the transform's exports.
import "./assembly/runtime";
import "./assembly/exports";
