-- The realistic chain of the benchmark (benches/scenarios/realistic.py), in nginx + Lua: what
-- Weir's jwt-auth + rate-limit + transform filters do on that route, written the way an
-- OpenResty/APISIX/Kong plugin would be, with only Debian's packages (libnginx-mod-http-lua,
-- lua-resty-core, lua-cjson).
--
-- 1. JWT verification: Bearer token from Authorization; header must say the configured alg
--    (HS256, RS256 or ES256) and carry no `crit`; HS256 is HMAC-SHA256 over "header.payload"
--    with OpenSSL's libcrypto through LuaJIT's FFI (how lua-resty-hmac / lua-resty-string do it:
--    nginx is linked with libcrypto, so ffi.C sees HMAC and EVP_sha256), compared in constant
--    time; RS256 and ES256 go through EVP_DigestVerify with the public key parsed once at
--    configure (what lua-resty-openssl does; ES256's r || s is re-encoded as DER for OpenSSL); then exp (required) and nbf with 30 s
--    leeway, iss, aud (string or list); the `sub` claim goes upstream as x-user-id (the header is
--    cleared first). Failures answer 401 with an RFC 6750 WWW-Authenticate.
-- 2. Rate limit: a token bucket per client IP in a lua_shared_dict, stored as one number (GCRA's
--    theoretical arrival time, equivalent to a token bucket of `burst` refilled at `rate`/s);
--    429 when empty; RateLimit-Limit/-Remaining/-Reset on allowed responses.
-- 3. Transform: request `x-bench: 1` set and `x-debug` removed; response `x-transformed: yes`.

local ffi = require "ffi"
local bit = require "bit"
local cjson = require "cjson.safe"
local b64 = require "ngx.base64"

local C = ffi.C
local byte, ceil, floor, type = string.byte, math.ceil, math.floor, type
local ngx, ngx_var, ngx_req, ngx_now = ngx, ngx.var, ngx.req, ngx.now

ffi.cdef [[
typedef struct evp_md_st EVP_MD;
const EVP_MD *EVP_sha256(void);
unsigned char *HMAC(const EVP_MD *evp_md, const void *key, int key_len,
                    const unsigned char *d, size_t n, unsigned char *md, unsigned int *md_len);
typedef struct bio_st BIO;
typedef struct evp_pkey_st EVP_PKEY;
typedef struct evp_md_ctx_st EVP_MD_CTX;
BIO *BIO_new_mem_buf(const void *buf, int len);
int BIO_free(BIO *a);
EVP_PKEY *PEM_read_bio_PUBKEY(BIO *bp, EVP_PKEY **x, void *cb, void *u);
EVP_MD_CTX *EVP_MD_CTX_new(void);
int EVP_MD_CTX_reset(EVP_MD_CTX *ctx);
int EVP_DigestVerifyInit(EVP_MD_CTX *ctx, void **pctx, const EVP_MD *type, void *e, EVP_PKEY *pkey);
int EVP_DigestVerify(EVP_MD_CTX *ctx, const unsigned char *sig, size_t siglen,
                     const unsigned char *tbs, size_t tbslen);
]]

local _M = {}
local cfg = {}
local md_buf = ffi.new("unsigned char[32]")
local md_len = ffi.new("unsigned int[1]")
local sha256, pkey, md_ctx

function _M.configure(c)
    cfg = c
    cfg.leeway = cfg.leeway or 30
    cfg.interval = 1 / cfg.rate                -- seconds per token
    cfg.tolerance = cfg.burst * cfg.interval   -- how far ahead the arrival time may run
    sha256 = C.EVP_sha256()
    cfg.alg = cfg.alg or "HS256"
    if cfg.alg ~= "HS256" then
        local bio = C.BIO_new_mem_buf(cfg.public_key_pem, #cfg.public_key_pem)
        pkey = C.PEM_read_bio_PUBKEY(bio, nil, nil, nil)
        C.BIO_free(bio)
        assert(pkey ~= nil, "weir_bench_chain: public_key_pem is not a PEM public key")
        md_ctx = C.EVP_MD_CTX_new()
    end
end

-- A DER INTEGER of the unsigned big-endian bytes `b` (leading zeros dropped, a 0 added when the
-- top bit is set).
local function der_int(b)
    local i = 1
    while i < #b and byte(b, i) == 0 do
        i = i + 1
    end
    b = b:sub(i)
    if byte(b, 1) >= 0x80 then
        b = "\0" .. b
    end
    return "\2" .. string.char(#b) .. b
end

-- JWS ES256 signatures are r || s; OpenSSL verifies DER ECDSA-Sig-Value.
local function ecdsa_der(sig)
    if #sig ~= 64 then
        return nil
    end
    local body = der_int(sig:sub(1, 32)) .. der_int(sig:sub(33, 64))
    return "\48" .. string.char(#body) .. body
end

local function verify_pkey(data, sig)
    if cfg.alg == "ES256" then
        sig = ecdsa_der(sig)
        if not sig then
            return false
        end
    end
    C.EVP_MD_CTX_reset(md_ctx)
    if C.EVP_DigestVerifyInit(md_ctx, nil, sha256, nil, pkey) ~= 1 then
        return false
    end
    return C.EVP_DigestVerify(md_ctx, sig, #sig, data, #data) == 1
end

local function hs256(data)
    if C.HMAC(sha256, cfg.secret, #cfg.secret, data, #data, md_buf, md_len) == nil then
        return nil
    end
    return ffi.string(md_buf, md_len[0])
end

local function equal_ct(a, b)
    if #a ~= #b then
        return false
    end
    local d = 0
    for i = 1, #a do
        d = bit.bor(d, bit.bxor(byte(a, i), byte(b, i)))
    end
    return d == 0
end

local function reject(err, why)
    local h = 'Bearer realm="weir"'
    if err ~= "missing_token" then
        h = h .. ', error="' .. err .. '", error_description="' .. why .. '"'
    end
    ngx.header["WWW-Authenticate"] = h
    ngx.header["Content-Type"] = "application/json"
    ngx.status = 401
    ngx.print(cjson.encode({ error = err, error_description = why or "a bearer token is required" }))
    return ngx.exit(401)
end

local function has_audience(aud, want)
    if type(aud) == "string" then
        return aud == want
    end
    if type(aud) == "table" then
        for _, a in ipairs(aud) do
            if a == want then
                return true
            end
        end
    end
    return false
end

local function verify()
    local auth = ngx_var.http_authorization
    if not auth then
        return reject("missing_token")
    end
    local token = auth:match("^[Bb][Ee][Aa][Rr][Ee][Rr] +([^ ]+) *$")
    if not token then
        return reject("missing_token")
    end
    local h64, p64, s64 = token:match("^([^.]+)%.([^.]+)%.([^.]+)$")
    if not h64 then
        return reject("invalid_token", "malformed token")
    end
    local hdr = cjson.decode(b64.decode_base64url(h64) or "")
    if type(hdr) ~= "table" then
        return reject("invalid_token", "malformed token")
    end
    if hdr.alg ~= cfg.alg then
        return reject("invalid_token", "unsupported algorithm")
    end
    if hdr.crit ~= nil then
        return reject("invalid_token", "unsupported critical header")
    end
    local sig = b64.decode_base64url(s64)
    if not sig then
        return reject("invalid_token", "invalid signature")
    end
    if cfg.alg == "HS256" then
        local mac = hs256(h64 .. "." .. p64)
        if not mac or not equal_ct(mac, sig) then
            return reject("invalid_token", "invalid signature")
        end
    elseif not verify_pkey(h64 .. "." .. p64, sig) then
        return reject("invalid_token", "invalid signature")
    end
    local claims = cjson.decode(b64.decode_base64url(p64) or "")
    if type(claims) ~= "table" then
        return reject("invalid_token", "malformed token")
    end
    local now = ngx_now()
    local exp, nbf = claims.exp, claims.nbf
    if exp == nil then
        return reject("invalid_token", "token has no expiry")
    end
    if type(exp) ~= "number" or (nbf ~= nil and type(nbf) ~= "number") then
        return reject("invalid_token", "invalid claims")
    end
    if now >= exp + cfg.leeway then
        return reject("invalid_token", "token expired")
    end
    if nbf and now + cfg.leeway < nbf then
        return reject("invalid_token", "token not yet valid")
    end
    if cfg.issuer and claims.iss ~= cfg.issuer then
        return reject("invalid_token", "invalid issuer")
    end
    if cfg.audience and not has_audience(claims.aud, cfg.audience) then
        return reject("invalid_token", "invalid audience")
    end
    ngx_req.clear_header("x-user-id")
    if type(claims.sub) == "string" then
        ngx_req.set_header("x-user-id", claims.sub)
    end
end

local function limit()
    local dict = ngx.shared.ratelimit
    local key = cfg.route .. "|" .. ngx_var.remote_addr
    local now = ngx_now()
    local tat = dict:get(key) or now
    if tat < now then
        tat = now
    end
    local new_tat = tat + cfg.interval
    local ahead = new_tat - now
    if ahead > cfg.tolerance then
        local retry = ceil(ahead - cfg.tolerance)
        ngx.header["Retry-After"] = retry
        ngx.header["RateLimit-Limit"] = cfg.burst
        ngx.header["RateLimit-Remaining"] = 0
        ngx.header["RateLimit-Reset"] = retry
        ngx.header["Content-Type"] = "application/json"
        ngx.status = 429
        ngx.print('{"error":"rate limited"}')
        return ngx.exit(429)
    end
    dict:set(key, new_tat, ceil(ahead) + 1)
    local ctx = ngx.ctx
    ctx.rl_remaining = floor((cfg.tolerance - ahead) / cfg.interval)
    ctx.rl_reset = ceil(ahead)
end

function _M.access()
    verify()
    limit()
    ngx_req.set_header("x-bench", "1")
    ngx_req.clear_header("x-debug")
end

function _M.header_filter()
    local ctx = ngx.ctx
    if ctx.rl_remaining then
        local h = ngx.header
        h["RateLimit-Limit"] = cfg.burst
        h["RateLimit-Remaining"] = ctx.rl_remaining
        h["RateLimit-Reset"] = ctx.rl_reset
        h["x-transformed"] = "yes"
    end
end

return _M
