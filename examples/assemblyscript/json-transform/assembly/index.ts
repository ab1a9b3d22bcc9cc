// json-transform: edits the top-level members of a JSON object request body (spec:
// examples/README.md).
//
// Config: { "remove": ["k", ...], "rename": { "old": "new", ... }, "set": { "k": <any JSON>, ... } }
// Applied in that order; members not named keep their order and values.

import {
  Action,
  Body,
  ConfigReader,
  ConfigResult,
  Filter,
  Header,
  JSON,
  JsonMember,
  JsonValue,
  LocalResponse,
  NoContext,
  Phases,
  decodeUtf8,
  registerFilter,
} from "@weir/filter";

const NOT_AN_OBJECT = '{"error":"body must be a JSON object"}';

class JsonTransform extends Filter {
  remove: Array<string> = [];
  rename: Array<Header> = [];
  set: Array<JsonMember> = [];

  configure(config: string): ConfigResult {
    const c = ConfigReader.parse(config);
    this.remove = c.stringArray("remove");
    this.rename = c.stringMap("rename");
    const set = c.object("set");
    const error = c.finish();
    if (error !== null) return ConfigResult.reject(error);
    if (set !== null) this.set = set.members;
    return ConfigResult.accept(Phases.REQUEST_BODY);
  }

  /** Remove, rename, then set, on the object's members in place. */
  edit(members: Array<JsonMember>): Array<JsonMember> {
    const kept = new Array<JsonMember>();
    for (let i = 0; i < members.length; i++) {
      if (!this.remove.includes(members[i].key)) kept.push(members[i]);
    }
    for (let i = 0; i < kept.length; i++) {
      const m = kept[i];
      // The last rule for a key wins, as in a JSON object.
      for (let r = this.rename.length - 1; r >= 0; r--) {
        if (this.rename[r].name == m.key) {
          m.key = this.rename[r].value;
          break;
        }
      }
    }
    for (let s = 0; s < this.set.length; s++) {
      const rule = this.set[s];
      let found = false;
      for (let i = 0; i < kept.length; i++) {
        if (kept[i].key == rule.key) {
          kept[i].value = rule.value;
          found = true;
          break;
        }
      }
      if (!found) kept.push(new JsonMember(rule.key, rule.value));
    }
    return kept;
  }

  onRequestBody(body: Body, end: bool, ctx: NoContext): Action {
    if (!end) return Action.BUFFER;
    const bytes = body.bytes();
    if (!bytes.ok) return LocalResponse.text(500, "json-transform: " + bytes.error!.toString()).action();
    if (bytes.value.length == 0) return Action.CONTINUE;
    const text = decodeUtf8(bytes.value);
    if (text === null) return LocalResponse.json(400, NOT_AN_OBJECT).action();
    const parsed = JSON.parse(text);
    if (!parsed.ok || !parsed.value!.isObject()) return LocalResponse.json(400, NOT_AN_OBJECT).action();
    const obj = parsed.value!;
    obj.members = this.edit(obj.members);
    const e = body.setText(obj.toString());
    if (e !== null) return LocalResponse.text(500, "json-transform: " + e.toString()).action();
    return Action.CONTINUE;
  }
}

registerFilter(new JsonTransform());
