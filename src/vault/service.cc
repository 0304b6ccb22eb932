#include "vault/service.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <ctime>
#include <semaphore>
#include <thread>

#include <nlohmann/json.hpp>
#include <openssl/crypto.h>

#include "crypto/crypto.h"
#include "util/bytes.h"
#include "vault/vault_dir.h"

namespace ds::vault {

using json = nlohmann::ordered_json;

namespace {

constexpr size_t kMaxSecretBytes = 25 * 1024;  // Azure Key Vault's limit for a secret value
constexpr size_t kMaxTags = 15;
constexpr size_t kMaxPage = 25;
constexpr int64_t kRecoverableDays = 90;
constexpr const char* kRecoveryLevel = "Recoverable+Purgeable";

enum class Op {
  kNone, kSet, kGet, kUpdate, kList, kVersions, kDelete, kListDeleted, kGetDeleted, kRecover,
  kPurge, kCreate, kRotate, kWrap, kUnwrap,
};

// Messages quote paths and names from the request, which may hold any bytes: never let invalid
// UTF-8 turn into an exception while serializing.
std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

ApiResponse Error(int status, const std::string& code, const std::string& message,
                  const std::string& inner = "") {
  json e = {{"code", code}, {"message", message}};
  if (!inner.empty()) e["innererror"] = {{"code", inner}};
  return {status, Dump(json{{"error", e}}), ""};
}

ApiResponse Ok(int status, const json& j) { return {status, Dump(j), ""}; }

std::string IsoTime(time_t t) {
  char buf[32];
  struct tm tm;
  gmtime_r(&t, &tm);
  strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

bool ValidName(const std::string& s) {
  return !s.empty() && s.size() <= 127 &&
         std::all_of(s.begin(), s.end(), [](char c) { return std::isalnum(uint8_t(c)) || c == '-'; });
}
bool ValidVersion(const std::string& s) {
  return s.size() <= 64 &&
         std::all_of(s.begin(), s.end(), [](char c) { return std::isalnum(uint8_t(c)); });
}
// The api-versions Azure Key Vault's data plane answers today (the current SDKs send 2026-04-01
// for secrets and 2025-07-01 for keys; older ones 7.x or 7.x-preview.N). Azure refuses any other
// with 400 BadParameter and the message ApiVersionError() gives, so do we.
constexpr const char* kLatestApiVersion = "2026-04-01";
bool ValidApiVersion(const std::string& v) {
  static const char* const kKnown[] = {"2015-06-01", "2016-10-01", "7.0", "7.1", "7.2", "7.3",
                                       "7.4", "7.5", "7.6", "2025-07-01", "2026-04-01"};
  for (const char* k : kKnown)
    if (v == k) return true;
  // 7.0-preview .. 7.6-preview.N
  if (v.size() < 11 || v[0] != '7' || v[1] != '.' || v[2] < '0' || v[2] > '6' ||
      v.compare(3, 8, "-preview") != 0)
    return false;
  return v.size() == 11 || (v.size() <= 14 && v[11] == '.' && v.size() > 12 &&
                            std::all_of(v.begin() + 12, v.end(), [](char c) { return std::isdigit(uint8_t(c)); }));
}
std::string ApiVersionError(const std::string& v) {
  return "The specified version (" + v.substr(0, 40) +
         ") is not recognized. Consider using the latest supported version (" + kLatestApiVersion + ").";
}

// A Host header that may go into object ids: a DNS name or IPv4 address, or a bracketed IPv6
// address, with an optional port. Anything else (spaces, slashes, quotes, '@') is refused.
bool ValidHost(const std::string& h) {
  if (h.empty() || h.size() > 261) return false;
  size_t end = h.size();
  if (h[0] == '[') {
    size_t close = h.find(']');
    if (close == std::string::npos || close < 3) return false;
    for (size_t i = 1; i < close; ++i)
      if (!std::isxdigit(uint8_t(h[i])) && h[i] != ':' && h[i] != '.') return false;
    if (close + 1 == h.size()) return true;
    if (h[close + 1] != ':') return false;
    std::string port = h.substr(close + 2);
    return !port.empty() && port.size() <= 5 &&
           std::all_of(port.begin(), port.end(), [](char c) { return std::isdigit(uint8_t(c)); });
  }
  if (size_t colon = h.find(':'); colon != std::string::npos) {
    std::string port = h.substr(colon + 1);
    if (port.empty() || port.size() > 5 ||
        !std::all_of(port.begin(), port.end(), [](char c) { return std::isdigit(uint8_t(c)); }))
      return false;
    end = colon;
  }
  if (end == 0 || end > 253 || h[0] == '.' || h[0] == '-') return false;
  return std::all_of(h.begin(), h.begin() + std::ptrdiff_t(end),
                     [](char c) { return std::isalnum(uint8_t(c)) || c == '-' || c == '.'; });
}

Result<std::string> NewVersion() {
  uint8_t raw[16];
  DS_RETURN_IF_ERROR(RandomBytes(raw));
  return HexEncode(raw);
}

// Values in wrap/unwrap bodies are base64url per the API; ADE sends standard base64: take both.
std::optional<Bytes> DecodeB64Any(const std::string& s) {
  if (auto b = Base64UrlDecode(s)) return b;
  return Base64Decode(s);
}

Status ParseTags(const json& j, std::string& out) {
  if (j.is_null()) {
    out = "{}";
    return Status::Ok();
  }
  if (!j.is_object()) return InvalidArgument("tags must be an object of strings");
  if (j.size() > kMaxTags) return InvalidArgument("at most 15 tags are allowed");
  for (auto& [k, v] : j.items()) {
    if (!v.is_string()) return InvalidArgument("tag '" + k + "' must be a string");
    if (k.empty() || k.size() > 512 || v.get<std::string>().size() > 256)
      return InvalidArgument("tag names are 1-512 characters, values at most 256");
  }
  out = j.dump();
  return Status::Ok();
}

Status ParseAttributes(const json& j, ObjectVersion& v) {
  if (j.is_null()) return Status::Ok();
  if (!j.is_object()) return InvalidArgument("attributes must be an object");
  if (j.contains("enabled")) {
    const json& e = j["enabled"];
    if (e.is_boolean()) v.enabled = e.get<bool>();
    else if (e == "true" || e == "false") v.enabled = e == "true";  // ADE sends a string
    else if (!e.is_null()) return InvalidArgument("attributes.enabled must be a boolean");
  }
  for (const char* f : {"nbf", "exp"}) {
    if (!j.contains(f)) continue;
    const json& t = j[f];
    std::optional<int64_t>& dst = std::string(f) == "nbf" ? v.nbf : v.exp;
    if (t.is_null()) dst.reset();
    else if (t.is_number_integer() && t.get<int64_t>() >= 0) dst = t.get<int64_t>();
    else return InvalidArgument(std::string("attributes.") + f + " must be Unix seconds (an integer)");
  }
  return Status::Ok();
}

// Request bodies: at most this many bytes and this much nesting (Azure's bodies nest 3 deep).
// The depth is checked by an iterative scan before the parser builds anything, so no tree deeper
// than kMaxJsonDepth exists and nothing recurses (copies, value(), destruction) on a client's depth.
constexpr size_t kMaxJsonBytes = 1 << 20;
constexpr size_t kMaxJsonDepth = 64;

// Parses a request body within the limits above; a discarded json when it is not valid JSON or
// over a limit, with `why` saying which.
json ParseBody(const std::string& body, std::string& why) {
  if (body.size() > kMaxJsonBytes) {
    why = "the request body is larger than 1 MiB";
    return json(json::value_t::discarded);
  }
  size_t depth = 0;
  bool in_string = false, escaped = false;
  for (char ch : body) {
    if (in_string) {
      if (escaped) escaped = false;
      else if (ch == '\\') escaped = true;
      else if (ch == '"') in_string = false;
    } else if (ch == '"') {
      in_string = true;
    } else if (ch == '{' || ch == '[') {
      if (++depth > kMaxJsonDepth) {
        why = "the request body nests deeper than 64 levels";
        return json(json::value_t::discarded);
      }
    } else if ((ch == '}' || ch == ']') && depth > 0) {
      --depth;
    }
  }
  json j = json::parse(body, nullptr, false);
  if (j.is_discarded()) why = "the request body is not valid JSON";
  return j;
}

// Copies src's members into dst (src is usually a temporary bundle built by Call).
void Merge(json& dst, const json& src) {
  for (auto it = src.begin(); it != src.end(); ++it) dst[it.key()] = it.value();
}

// Per-thread locked scratch for plaintexts on the hot paths (GET secret, unwrapkey): allocated
// once per worker thread instead of an mmap+mlock per request. Wiped after every use.
std::span<uint8_t> Scratch(size_t n) {
  thread_local SecureBuffer buf;
  if (buf.size() < n) buf = SecureBuffer(std::max<size_t>(n, 32 * 1024));
  return buf.span().first(n);
}

// At most one CPU-heavy operation per core at a time (RAII). Waiters queue on a futex.
class CpuSlot {
 public:
  CpuSlot() { Sem().acquire(); }
  ~CpuSlot() { Sem().release(); }
  CpuSlot(const CpuSlot&) = delete;
  CpuSlot& operator=(const CpuSlot&) = delete;

 private:
  static std::counting_semaphore<1024>& Sem() {
    static std::counting_semaphore<1024> sem(
        std::ptrdiff_t(std::clamp(std::thread::hardware_concurrency(), 1u, 1024u)));
    return sem;
  }
};

ApiResponse FromStatus(const Status& s, const std::string& not_found_code) {
  switch (s.code()) {
    case Code::kInvalidArgument: case Code::kUnsupported:
      return Error(400, "BadParameter", s.message());
    case Code::kNotFound: return Error(404, not_found_code, s.message());
    case Code::kBusy: return Error(409, "Conflict", s.message());
    case Code::kPermissionDenied: return Error(403, "Forbidden", s.message());
    default: return Error(500, "InternalServerError", "the vault failed: " + s.message());
  }
}

}  // namespace

// ---- audit log ----

Result<std::unique_ptr<AuditLog>> AuditLog::Open(const std::string& path) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (fd < 0) return PosixError(path, errno);
  return std::unique_ptr<AuditLog>(new AuditLog(fd));
}

AuditLog::~AuditLog() { ::close(fd_); }

Status AuditLog::Record(const std::string& line) {
  std::string l = line + "\n";
  std::lock_guard lock(mu_);
  size_t done = 0;
  while (done < l.size()) {
    ssize_t n = ::write(fd_, l.data() + done, l.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return PosixError("audit log", errno);
    if (n == 0) return IOError("audit log: short write");
    done += size_t(n);
  }
  return Status::Ok();
}

// ---- service ----

struct VaultService::Call {
  Call(const ApiRequest& r, std::string b) : req(r), base(std::move(b)) {}
  const ApiRequest& req;
  std::string base;  // "https://host"
  std::string api_version;
  Op op = Op::kNone;
  Kind kind = Kind::kSecret;
  bool deleted_area = false;  // /deletedsecrets, /deletedkeys
  std::string name, version;
  std::string perm;  // permission the operation needs
  std::string token_name;
  std::string machine;  // the token's machine scope; "" for an operator token
  // A scoped token unwrapping with a key its machine does not own: allowed only for a
  // ciphertext that one of its machine's secrets holds (WrapUnwrap checks the registry).
  bool unwrap_needs_registry = false;
  json body;
  int64_t now = 0;

  std::string Id(const std::string& v) const {
    return base + "/" + KindName(kind) + "/" + name + "/" + v;
  }
  std::string RecoveryId() const {
    return base + "/deleted" + KindName(kind) + "/" + name;
  }
  json Attributes(const ObjectVersion& v) const {
    json a = {{"enabled", v.enabled}};
    if (v.nbf) a["nbf"] = *v.nbf;
    if (v.exp) a["exp"] = *v.exp;
    a["created"] = v.created;
    a["updated"] = v.updated;
    a["recoveryLevel"] = kRecoveryLevel;
    if (api_version != "2015-06-01" && api_version != "2016-10-01") a["recoverableDays"] = kRecoverableDays;
    return a;
  }
  // The listing/bundle fields every object has; keys add "key" (or "kid"), secrets "id".
  // `versioned` false: the id names the object, not the version, as Azure's list-objects and
  // list-deleted items do.
  json Item(const ObjectVersion& v, bool versioned = true) const {
    json j;
    std::string id = versioned ? Id(v.version) : base + "/" + KindName(kind) + "/" + name;
    if (kind == Kind::kSecret) {
      j["id"] = id;
      if (!v.content_type.empty()) j["contentType"] = v.content_type;
    } else {
      j["kid"] = id;
    }
    j["attributes"] = Attributes(v);
    json tags = json::parse(v.tags_json, nullptr, false);
    if (tags.is_object() && !tags.empty()) j["tags"] = tags;
    return j;
  }
  json KeyJson(const ObjectVersion& v) const {
    json meta = json::parse(v.meta_json, nullptr, false);
    json k = {{"kid", Id(v.version)}, {"kty", meta.value("kty", "")},
              {"key_ops", meta.value("key_ops", json::array())}};
    if (meta.contains("n")) {
      k["n"] = meta["n"];
      k["e"] = meta["e"];
    }
    return k;
  }
  json KeyBundle(const ObjectVersion& v) const {
    json j = {{"key", KeyJson(v)}, {"attributes", Attributes(v)}};
    json tags = json::parse(v.tags_json, nullptr, false);
    if (tags.is_object() && !tags.empty()) j["tags"] = tags;
    return j;
  }
  // Why a version may not be used now (disabled, not yet valid, expired), or "".
  std::string Unusable(const ObjectVersion& v) const {
    if (!v.enabled) return "disabled";
    if (v.nbf && now < *v.nbf) return "not yet valid";
    if (v.exp && now > *v.exp) return "expired";
    return "";
  }
  std::string NotFoundCode() const { return kind == Kind::kSecret ? "SecretNotFound" : "KeyNotFound"; }
  std::string Object() const {
    std::string o = std::string(deleted_area ? "deleted" : "") + KindName(kind);
    if (!name.empty()) o += "/" + name;
    if (!version.empty()) o += "/" + version;
    return o;
  }
};

VaultService::VaultService(std::unique_ptr<VaultStore> store, MasterKey master,
                           std::unique_ptr<AuditLog> audit, std::string token_stamp_file)
    : store_(std::move(store)),
      master_(std::move(master)),
      audit_(std::move(audit)),
      token_stamp_file_(std::move(token_stamp_file)) {}

namespace {
constexpr size_t kMaxCachedNames = 100000;  // bound on memory: past it the cache starts over
std::string CacheKey(Kind kind, const std::string& name) { return std::string(KindName(kind)) + "/" + name; }
}  // namespace

Result<std::shared_ptr<const ObjectVersion>> VaultService::CachedGet(Kind kind, const std::string& name,
                                                                     const std::string& version) {
  std::string key = CacheKey(kind, name);
  uint64_t gen;
  {
    std::shared_lock lock(objects_mu_);
    if (auto it = objects_.find(key); it != objects_.end())
      if (auto v = it->second.find(version); v != it->second.end()) return v->second;
    gen = generation_;
  }
  DS_ASSIGN_OR_RETURN(ObjectVersion v, store_->Get(kind, name, version, false));
  auto shared = std::make_shared<const ObjectVersion>(std::move(v));
  std::unique_lock lock(objects_mu_);
  if (gen == generation_) {
    if (objects_.size() >= kMaxCachedNames) objects_.clear();
    objects_[key][version] = shared;
  }
  return shared;
}

void VaultService::Invalidate(Kind kind, const std::string& name) {
  std::unique_lock lock(objects_mu_);
  ++generation_;
  objects_.erase(CacheKey(kind, name));
}

Result<TokenRecord> VaultService::LookupToken(const std::string& hash_hex) {
  if (token_stamp_file_.empty()) return store_->FindTokenByHash(hash_hex);
  struct stat st;
  std::pair<uint64_t, int64_t> stamp{0, 0};
  if (::stat(token_stamp_file_.c_str(), &st) == 0)
    stamp = {uint64_t(st.st_ino), int64_t(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec};
  {
    std::shared_lock lock(tokens_mu_);
    if (stamp == token_stamp_)
      if (auto it = tokens_.find(hash_hex); it != tokens_.end()) return it->second;
  }
  // The stamp is read before the database, so a revocation committed after this read changes
  // the stamp and the entry inserted below is dropped on the next call.
  DS_ASSIGN_OR_RETURN(TokenRecord t, store_->FindTokenByHash(hash_hex));
  std::unique_lock lock(tokens_mu_);
  if (stamp != token_stamp_) {
    tokens_.clear();
    token_stamp_ = stamp;
  }
  if (tokens_.size() >= kMaxCachedNames) tokens_.clear();
  tokens_[hash_hex] = t;
  return t;
}

namespace {
std::vector<std::string> SplitPath(const std::string& path) {
  std::vector<std::string> segs;
  size_t pos = path.empty() || path[0] != '/' ? 0 : 1;
  while (pos <= path.size()) {
    size_t slash = path.find('/', pos);
    if (slash == std::string::npos) slash = path.size();
    segs.push_back(path.substr(pos, slash - pos));
    pos = slash + 1;
  }
  // "/secrets/name/" (the SDKs' "latest version" form) ends in an empty segment: drop it.
  if (segs.size() > 1 && segs.back().empty()) segs.pop_back();
  return segs;
}

// Maps method + path to the operation and the permission it needs. Returns false if no route.
bool Route(const std::string& method, const std::vector<std::string>& s, Op& op, Kind& kind,
           bool& deleted_area, std::string& name, std::string& version, std::string& perm) {
  if (s.empty()) return false;
  const std::string& area = s[0];
  if (area == "secrets" || area == "deletedsecrets") kind = Kind::kSecret;
  else if (area == "keys" || area == "deletedkeys") kind = Kind::kKey;
  else return false;
  deleted_area = area.rfind("deleted", 0) == 0;
  std::string p = KindName(kind);
  auto set = [&](Op o, const char* what) {
    op = o;
    perm = p + ":" + what;
    return true;
  };
  size_t n = s.size();
  if (n >= 2) name = s[1];
  if (deleted_area) {
    if (n == 1 && method == "GET") return set(Op::kListDeleted, "list");
    if (n == 2 && method == "GET") return set(Op::kGetDeleted, "list");
    if (n == 2 && method == "DELETE") return set(Op::kPurge, "purge");
    if (n == 3 && s[2] == "recover" && method == "POST") return set(Op::kRecover, "recover");
    return false;
  }
  if (n == 1) return method == "GET" && set(Op::kList, "list");
  if (n == 2) {
    if (method == "GET") return set(Op::kGet, "get");
    if (method == "DELETE") return set(Op::kDelete, "delete");
    if (kind == Kind::kSecret && method == "PUT") return set(Op::kSet, "set");
    if (kind == Kind::kSecret && method == "PATCH") return set(Op::kUpdate, "set");
    return false;
  }
  if (n == 3) {
    if (s[2] == "versions" && method == "GET") return set(Op::kVersions, "list");
    if (kind == Kind::kKey && method == "POST") {
      if (s[2] == "create") return set(Op::kCreate, "create");
      if (s[2] == "rotate") return set(Op::kRotate, "rotate");
      if (s[2] == "wrapkey") return set(Op::kWrap, "wrap");
      if (s[2] == "unwrapkey") return set(Op::kUnwrap, "unwrap");
      return false;
    }
    version = s[2];
    if (method == "GET") return set(Op::kGet, "get");
    if (kind == Kind::kSecret && method == "PATCH") return set(Op::kUpdate, "set");
    return false;
  }
  if (n == 4 && kind == Kind::kKey && method == "POST") {
    version = s[2];  // may be empty: "/keys/name//wrapkey" means the newest version
    if (s[3] == "wrapkey") return set(Op::kWrap, "wrap");
    if (s[3] == "unwrapkey") return set(Op::kUnwrap, "unwrap");
  }
  return false;
}
}  // namespace

namespace {
// The registry key for a wrapped value: SHA-256 of its bytes. The registry maps it to the machine
// whose secret first held it.
std::string CiphertextKey(std::span<const uint8_t> data) {
  auto h = Hash("sha256", data);
  return "unwrap/" + (h.ok() ? HexEncode(*h) : std::string());
}

// Records that `owner`'s secret holds `value` (a "Wrapped BEK", base64), so that machine may
// unwrap it with a key it does not own (the operators' shared KEK) later. The first machine to
// store a value keeps it; a value stored under another contentType is not registered, so it
// cannot be unwrapped by a host either.
std::optional<ApiResponse> ClaimCiphertext(VaultStore& store, const std::string& value,
                                           const std::string& owner) {
  auto data = DecodeB64Any(value);
  if (!data || data->empty()) return std::nullopt;
  auto claimed = store.ClaimMeta(CiphertextKey(*data), AsBytes(owner));
  OPENSSL_cleanse(data->data(), data->size());
  if (!claimed.ok()) return FromStatus(claimed.status(), "SecretNotFound");
  if (std::string(claimed->begin(), claimed->end()) != owner)
    return Error(403, "Forbidden", "this value is already held by another machine's secret",
                 "ForbiddenByPolicy");
  return std::nullopt;
}

// The KEK-wrapped value a secret holds, which its owner may unwrap later: the whole value of a
// "Wrapped BEK" (ADE's passphrase), or the wrapped volume key inside diskseal's escrowed header
// (contentType kHeaderContentType, see engine/volume_escrow.h: {"volume_key": <base64>,
// "volume_key_kek": <kid>, ...}; an unwrapped key there has no kid and nothing to register).
// Spelled as engine::kContentTypeHeader in volume_escrow.h (the README walkthrough test escrows a
// header with a host token, so the two cannot drift apart unnoticed).
constexpr const char* kHeaderContentType = "application/vnd.diskseal.luks2-header+json";
std::optional<std::string> WrappedValueOf(const std::string& content_type, const std::string& value) {
  if (content_type == "Wrapped BEK") return value;
  if (content_type != kHeaderContentType) return std::nullopt;
  std::string why;
  json j = ParseBody(value, why);  // the same depth and size limits as a request body
  if (!j.is_object() || !j.contains("volume_key_kek") || !j.contains("volume_key") ||
      !j["volume_key"].is_string())
    return std::nullopt;
  return j["volume_key"].get<std::string>();  // KEK-wrapped: no secret in clear
}

// A scoped token's secret must carry its own machine in the MachineName tag (ADE's tag, which
// escrow sets): what the tag says and who owns the secret never disagree.
std::optional<ApiResponse> MachineTagError(const std::string& token_name, const std::string& machine,
                                           const std::string& tags_json) {
  if (machine.empty()) return std::nullopt;
  json tags = json::parse(tags_json, nullptr, false);
  if (tags.is_object() && tags.contains("MachineName") && tags["MachineName"] == machine)
    return std::nullopt;
  return Error(403, "Forbidden",
               "token '" + token_name + "' of machine '" + machine +
                   "' may store only secrets tagged MachineName=" + machine,
               "ForbiddenByPolicy");
}
}  // namespace

std::optional<ApiResponse> VaultService::AuthorizeObject(Call& c) {
  if (c.machine.empty()) return std::nullopt;  // an operator token reaches every object
  auto deny = [&](const std::string& why) {
    return Error(403, "Forbidden",
                 "token '" + c.token_name + "' of machine '" + c.machine + "' " + why, "ForbiddenByPolicy");
  };
  if (c.op == Op::kList || c.op == Op::kListDeleted)
    return deny("may not list every " + std::string(KindName(c.kind)) +
                " name: listing all names is for operator tokens");
  auto owner = store_->GetOwner(c.kind, c.name);
  if (!owner.ok()) return FromStatus(owner.status(), c.NotFoundCode());
  if (!owner->has_value()) {
    // A new name: set and create make it this machine's (AddVersion records the owner in the
    // same transaction that checks it). Anything else is answered here, before reading.
    if (c.op == Op::kSet || c.op == Op::kCreate) return std::nullopt;
    return Error(404, c.NotFoundCode(), c.Object() + " not found");
  }
  const std::string& o = **owner;
  if (o == c.machine) return std::nullopt;
  if (c.kind == Kind::kKey && o.empty()) {
    // An operator's key (a shared KEK): its public half is for everyone; its private half only
    // for the ciphertexts this machine's secrets hold.
    if (c.op == Op::kGet || c.op == Op::kVersions || c.op == Op::kWrap) return std::nullopt;
    if (c.op == Op::kUnwrap) {
      c.unwrap_needs_registry = true;
      return std::nullopt;
    }
  }
  if (c.kind == Kind::kKey && c.op == Op::kUnwrap) {
    c.unwrap_needs_registry = true;  // another machine's key: same rule
    return std::nullopt;
  }
  return deny("may not " + c.perm.substr(c.perm.find(':') + 1) + " " + c.Object() + ": it belongs to " +
              (o.empty() ? "the operators" : "another machine"));
}

ApiResponse VaultService::Handle(const ApiRequest& req) {
  bool host_ok = req.host.empty() || ValidHost(req.host);
  Call c(req, "https://" + (req.host.empty() || !host_ok ? std::string("localhost") : req.host));
  c.now = int64_t(std::time(nullptr));
  ApiResponse r = host_ok ? Dispatch(c)
                          : Error(400, "BadParameter",
                                  "the Host header is not a host name, IP address or [IPv6] with an optional port");
  if (audit_) {
    json line = {{"time", IsoTime(time_t(c.now))}, {"remote", req.remote},
                 {"token", c.token_name.empty() ? json(nullptr) : json(c.token_name)},
                 {"op", c.perm.empty() ? req.method + " " + req.path.substr(0, 200) : c.perm},
                 {"object", c.Object()}, {"status", r.status}};
    if (r.status >= 400) {
      json e = json::parse(r.body, nullptr, false);
      if (e.is_object() && e.contains("error")) line["error"] = e["error"].value("code", "");
    }
    if (Status s = audit_->Record(Dump(line)); !s.ok()) {
      // Decided: fail the request, keep serving (a full disk may clear; `vault serve` keeps
      // answering 503 until it does). What was asked for is not handed out unaudited.
      if (!r.body.empty()) OPENSSL_cleanse(r.body.data(), r.body.size());
      return Error(503, "ServiceUnavailable",
                   "the vault cannot write its audit log (" + s.message() +
                       "); it answers nothing it cannot audit");
    }
  }
  return r;
}

ApiResponse VaultService::Dispatch(Call& c) {
  const ApiRequest& req = c.req;
  // 1. Who is calling. A missing token gets the challenge the Azure SDKs start their auth from.
  const std::string& auth = req.authorization;
  if (auth.size() < 8 || strncasecmp(auth.c_str(), "Bearer ", 7) != 0) {
    ApiResponse r = Error(401, "Unauthorized", "AKV10000: Request is missing a Bearer token.");
    r.www_authenticate =
        "Bearer authorization=\"" + c.base + "/diskseal-token\", resource=\"" + c.base + "\"";
    return r;
  }
  auto token = LookupToken(HashToken(std::string_view(auth).substr(7)));
  if (!token.ok() || token->revoked) {
    if (!token.ok() && token.status().code() != Code::kNotFound)
      return FromStatus(token.status(), "Unauthorized");
    ApiResponse r = Error(401, "Unauthorized", "the bearer token is not valid or was revoked");
    r.www_authenticate = "Bearer authorization=\"" + c.base + "/diskseal-token\", resource=\"" +
                         c.base + "\", error=\"invalid_token\"";
    return r;
  }
  c.token_name = token->name;
  c.machine = token->machine;
  if (token->expires != 0 && c.now >= token->expires) {
    ApiResponse r = Error(401, "Unauthorized",
                          "token '" + token->name + "' expired at " + IsoTime(time_t(token->expires)) +
                              "; make a new one with `diskseal vault token create`",
                          "TokenExpired");
    r.www_authenticate = "Bearer authorization=\"" + c.base + "/diskseal-token\", resource=\"" +
                         c.base + "\", error=\"invalid_token\"";
    return r;
  }

  // 2. Which API version and operation.
  auto av = req.query.find("api-version");
  if (av == req.query.end())
    return Error(400, "BadParameter", "the api-version query parameter is required (e.g. 7.4)");
  c.api_version = av->second;
  if (!ValidApiVersion(c.api_version)) return Error(400, "BadParameter", ApiVersionError(c.api_version));
  if (!Route(req.method, SplitPath(req.path), c.op, c.kind, c.deleted_area, c.name, c.version, c.perm))
    return Error(404, "NotFound", "no operation " + req.method + " " + req.path.substr(0, 200));
  if (c.op != Op::kList && c.op != Op::kListDeleted && !ValidName(c.name))
    return Error(400, "BadParameter",
                 "object name '" + c.name.substr(0, 130) + "' must be 1-127 characters of 0-9, a-z, A-Z and -");
  if (!ValidVersion(c.version))
    return Error(400, "BadParameter", "version '" + c.version.substr(0, 70) + "' is not valid");

  // 3. May this token do it.
  if (std::find(token->perms.begin(), token->perms.end(), c.perm) == token->perms.end())
    return Error(403, "Forbidden",
                 "token '" + token->name + "' lacks permission " + c.perm + " for " + req.method +
                     " " + c.Object(),
                 "AccessDenied");
  // 3b. And on this object (machine-scoped tokens).
  if (auto denied = AuthorizeObject(c)) return *denied;

  // 4. The body, for the operations that take one.
  bool wants_body = c.op == Op::kSet || c.op == Op::kUpdate || c.op == Op::kCreate ||
                    c.op == Op::kWrap || c.op == Op::kUnwrap;
  if (wants_body) {
    std::string why;
    c.body = ParseBody(req.body, why);
    if (c.body.is_discarded()) return Error(400, "BadParameter", why);
    if (!c.body.is_object()) return Error(400, "BadParameter", "the request body must be a JSON object");
  } else if (c.op == Op::kRotate && !req.body.empty()) {
    std::string why;
    json b = ParseBody(req.body, why);
    if (b.is_discarded()) return Error(400, "BadParameter", why);
  }

  switch (c.op) {
    case Op::kSet: return SetSecret(c);
    case Op::kGet: return c.kind == Kind::kSecret ? GetSecret(c) : GetKey(c);
    case Op::kUpdate: return UpdateSecret(c);
    case Op::kList: return ListVersions(c, true);
    case Op::kVersions: return ListVersions(c, false);
    case Op::kDelete: return DeleteObject(c);
    case Op::kListDeleted: return ListDeleted(c);
    case Op::kGetDeleted: return GetDeleted(c);
    case Op::kRecover: return RecoverObject(c);
    case Op::kPurge: return PurgeObject(c);
    case Op::kCreate: return CreateKey(c, false);
    case Op::kRotate: return CreateKey(c, true);
    case Op::kWrap: return WrapUnwrap(c, true);
    case Op::kUnwrap: return WrapUnwrap(c, false);
    case Op::kNone: break;
  }
  return Error(500, "InternalServerError", "unrouted operation");
}

ApiResponse VaultService::SetSecret(Call& c) {
  const json& b = c.body;
  if (!b.contains("value") || !b["value"].is_string())
    return Error(400, "BadParameter", "'value' is required and must be a string");
  const std::string& value = b["value"].get_ref<const std::string&>();
  if (value.size() > kMaxSecretBytes)
    return Error(400, "BadParameter", "secret value is larger than 25 KiB");
  ObjectVersion v;
  v.kind = Kind::kSecret;
  v.name = c.name;
  if (b.contains("contentType") && !b["contentType"].is_null()) {
    if (!b["contentType"].is_string() || b["contentType"].get<std::string>().size() > 255)
      return Error(400, "BadParameter", "'contentType' must be a string of at most 255 characters");
    v.content_type = b["contentType"].get<std::string>();
  }
  if (Status s = ParseTags(b.value("tags", json()), v.tags_json); !s.ok())
    return Error(400, "BadParameter", s.message());
  if (auto bad = MachineTagError(c.token_name, c.machine, v.tags_json)) return *bad;
  if (Status s = ParseAttributes(b.value("attributes", json()), v); !s.ok())
    return Error(400, "BadParameter", s.message());
  // Whose secret this becomes (or is): a wrapped value in it may be unwrapped by that machine.
  std::string owner = c.machine;
  if (owner.empty()) {
    auto o = store_->GetOwner(Kind::kSecret, c.name);
    if (!o.ok()) return FromStatus(o.status(), "SecretNotFound");
    if (o->has_value()) owner = **o;
  }
  if (!owner.empty())
    if (auto wrapped = WrappedValueOf(v.content_type, value))
      if (auto bad = ClaimCiphertext(*store_, *wrapped, owner)) return *bad;
  auto ver = NewVersion();
  if (!ver.ok()) return FromStatus(ver.status(), "SecretNotFound");
  v.version = *ver;
  v.created = v.updated = c.now;
  auto sealed = master_.Seal(AsBytes(value), "secrets/" + v.name + "/" + v.version);
  if (!sealed.ok()) return FromStatus(sealed.status(), "SecretNotFound");
  v.sealed = std::move(*sealed);
  Status added = store_->AddVersion(v, c.machine);
  Invalidate(Kind::kSecret, v.name);
  if (!added.ok()) return FromStatus(added, "SecretNotFound");
  c.version = v.version;
  json j = {{"value", value}};
  Merge(j, c.Item(v));
  return Ok(200, j);
}

ApiResponse VaultService::GetSecret(Call& c) {
  auto cached = CachedGet(Kind::kSecret, c.name, c.version);
  if (!cached.ok()) return FromStatus(cached.status(), "SecretNotFound");
  const ObjectVersion* v = cached->get();
  c.version = v->version;
  if (std::string why = c.Unusable(*v); !why.empty())
    return Error(403, "Forbidden", "Operation get is not allowed on a " + why + " secret.",
                 "SecretDisabled");
  std::span<uint8_t> scratch = Scratch(MasterKey::PlainSize(v->sealed.size()));
  auto n = master_.OpenInto(v->sealed, "secrets/" + v->name + "/" + v->version, scratch);
  if (!n.ok()) return FromStatus(n.status(), "SecretNotFound");
  json j = {{"value", std::string(reinterpret_cast<const char*>(scratch.data()), *n)}};
  OPENSSL_cleanse(scratch.data(), scratch.size());
  Merge(j, c.Item(*v));
  ApiResponse r = Ok(200, j);
  std::string& value = j["value"].get_ref<std::string&>();
  OPENSSL_cleanse(value.data(), value.size());
  return r;
}

ApiResponse VaultService::UpdateSecret(Call& c) {
  const json& b = c.body;
  if (b.contains("value"))
    return Error(400, "BadParameter", "a secret's value cannot be updated; set a new version");
  auto got = store_->Get(Kind::kSecret, c.name, c.version, false);
  if (!got.ok()) return FromStatus(got.status(), "SecretNotFound");
  ObjectVersion v = std::move(*got);
  c.version = v.version;
  if (b.contains("contentType")) {
    if (!b["contentType"].is_string() || b["contentType"].get<std::string>().size() > 255)
      return Error(400, "BadParameter", "'contentType' must be a string of at most 255 characters");
    v.content_type = b["contentType"].get<std::string>();
  }
  if (b.contains("tags")) {
    if (Status s = ParseTags(b["tags"], v.tags_json); !s.ok()) return Error(400, "BadParameter", s.message());
    if (auto bad = MachineTagError(c.token_name, c.machine, v.tags_json)) return *bad;
  }
  if (Status s = ParseAttributes(b.value("attributes", json()), v); !s.ok())
    return Error(400, "BadParameter", s.message());
  v.updated = c.now;
  Status updated = store_->UpdateVersion(v);
  Invalidate(Kind::kSecret, v.name);
  if (!updated.ok()) return FromStatus(updated, "SecretNotFound");
  return Ok(200, c.Item(v));
}

ApiResponse VaultService::ListVersions(Call& c, bool names_only) {
  size_t max = kMaxPage, skip = 0;
  if (auto it = c.req.query.find("maxresults"); it != c.req.query.end()) {
    auto m = ParseU64(it->second);
    if (!m || *m < 1 || *m > kMaxPage)
      return Error(400, "BadParameter", "maxresults must be an integer from 1 to 25");
    max = size_t(*m);
  }
  if (auto it = c.req.query.find("$skiptoken"); it != c.req.query.end()) {
    auto s = ParseU64(it->second);
    if (!s || *s > (uint64_t(1) << 40)) return Error(400, "BadParameter", "$skiptoken is not valid");
    skip = size_t(*s);
  }
  auto rows = names_only ? store_->ListNames(c.kind, skip, max + 1)
                         : store_->ListVersions(c.kind, c.name, skip, max + 1);
  if (!rows.ok()) return FromStatus(rows.status(), c.NotFoundCode());
  if (!names_only && rows->empty() && skip == 0)
    return Error(404, c.NotFoundCode(), std::string(KindName(c.kind)) + "/" + c.name + " not found");
  json value = json::array();
  for (size_t i = 0; i < rows->size() && i < max; ++i) {
    const ObjectVersion& v = (*rows)[i];
    std::string saved = c.name;
    c.name = v.name;
    value.push_back(c.Item(v, !names_only));
    c.name = saved;
  }
  json j = {{"value", value}, {"nextLink", nullptr}};
  if (rows->size() > max)
    j["nextLink"] = c.base + c.req.path + "?api-version=" + c.api_version +
                    "&$skiptoken=" + std::to_string(skip + max) + "&maxresults=" + std::to_string(max);
  return Ok(200, j);
}

ApiResponse VaultService::DeleteObject(Call& c) {
  auto latest = store_->Get(c.kind, c.name, "", false);
  if (!latest.ok()) return FromStatus(latest.status(), c.NotFoundCode());
  auto d = store_->SoftDelete(c.kind, c.name, c.now, kRecoverableDays * 86400);
  Invalidate(c.kind, c.name);
  if (!d.ok()) return FromStatus(d.status(), c.NotFoundCode());
  json j = {{"recoveryId", c.RecoveryId()}, {"deletedDate", d->deleted_date},
            {"scheduledPurgeDate", d->scheduled_purge_date}};
  Merge(j, c.kind == Kind::kKey ? c.KeyBundle(*latest) : c.Item(*latest));
  return Ok(200, j);
}

ApiResponse VaultService::ListDeleted(Call& c) {
  size_t max = kMaxPage, skip = 0;
  if (auto it = c.req.query.find("maxresults"); it != c.req.query.end()) {
    auto m = ParseU64(it->second);
    if (!m || *m < 1 || *m > kMaxPage)
      return Error(400, "BadParameter", "maxresults must be an integer from 1 to 25");
    max = size_t(*m);
  }
  if (auto it = c.req.query.find("$skiptoken"); it != c.req.query.end()) {
    auto s = ParseU64(it->second);
    if (!s || *s > (uint64_t(1) << 40)) return Error(400, "BadParameter", "$skiptoken is not valid");
    skip = size_t(*s);
  }
  auto rows = store_->ListDeleted(c.kind, skip, max + 1);
  if (!rows.ok()) return FromStatus(rows.status(), c.NotFoundCode());
  json value = json::array();
  for (size_t i = 0; i < rows->size() && i < max; ++i) {
    const DeletedName& d = (*rows)[i];
    c.name = d.name;
    json item = {{"recoveryId", c.RecoveryId()}, {"deletedDate", d.deleted_date},
                 {"scheduledPurgeDate", d.scheduled_purge_date}};
    if (auto v = store_->Get(c.kind, d.name, "", true); v.ok())
      Merge(item, c.Item(*v, false));
    value.push_back(item);
  }
  c.name.clear();
  json j = {{"value", value}, {"nextLink", nullptr}};
  if (rows->size() > max)
    j["nextLink"] = c.base + c.req.path + "?api-version=" + c.api_version +
                    "&$skiptoken=" + std::to_string(skip + max) + "&maxresults=" + std::to_string(max);
  return Ok(200, j);
}

ApiResponse VaultService::GetDeleted(Call& c) {
  auto d = store_->GetDeleted(c.kind, c.name);
  if (!d.ok()) return FromStatus(d.status(), c.NotFoundCode());
  auto v = store_->Get(c.kind, c.name, "", true);
  if (!v.ok()) return FromStatus(v.status(), c.NotFoundCode());
  json j = {{"recoveryId", c.RecoveryId()}, {"deletedDate", d->deleted_date},
            {"scheduledPurgeDate", d->scheduled_purge_date}};
  json rest = c.kind == Kind::kKey ? c.KeyBundle(*v) : c.Item(*v);
  Merge(j, rest);
  return Ok(200, j);
}

ApiResponse VaultService::RecoverObject(Call& c) {
  Status recovered = store_->Recover(c.kind, c.name);
  Invalidate(c.kind, c.name);
  if (!recovered.ok()) return FromStatus(recovered, c.NotFoundCode());
  auto v = store_->Get(c.kind, c.name, "", false);
  if (!v.ok()) return FromStatus(v.status(), c.NotFoundCode());
  return Ok(200, c.kind == Kind::kKey ? c.KeyBundle(*v) : c.Item(*v));
}

ApiResponse VaultService::PurgeObject(Call& c) {
  Status purged = store_->Purge(c.kind, c.name);
  Invalidate(c.kind, c.name);
  if (!purged.ok()) return FromStatus(purged, c.NotFoundCode());
  return {204, "", ""};
}

ApiResponse VaultService::CreateKey(Call& c, bool rotate) {
  std::string kty;
  int size = 0;
  json ops;
  ObjectVersion v;
  v.kind = Kind::kKey;
  v.name = c.name;
  if (rotate) {
    // A new version with the type, size, operations and tags of the newest one.
    auto latest = store_->Get(Kind::kKey, c.name, "", false);
    if (!latest.ok()) return FromStatus(latest.status(), "KeyNotFound");
    json meta = json::parse(latest->meta_json, nullptr, false);
    kty = meta.value("kty", "");
    size = meta.value("key_size", 0);
    ops = meta.value("key_ops", json::array());
    v.tags_json = latest->tags_json;
  } else {
    const json& b = c.body;
    if (!b.contains("kty") || !b["kty"].is_string())
      return Error(400, "BadParameter", "'kty' is required: RSA or oct");
    kty = b["kty"].get<std::string>();
    if (kty == "RSA-HSM") kty = "RSA";  // no HSM here; the software key serves the same API
    if (kty == "oct-HSM") kty = "oct";
    if (kty != "RSA" && kty != "oct")
      return Error(400, "BadParameter", "kty '" + kty.substr(0, 20) + "' is not supported (RSA, oct)");
    if (b.contains("key_size") && !b["key_size"].is_null()) {
      if (!b["key_size"].is_number_integer()) return Error(400, "BadParameter", "'key_size' must be an integer");
      int64_t ks = b["key_size"].get<int64_t>();
      if (ks < 0 || ks > 16384) return Error(400, "BadParameter", "'key_size' is out of range");
      size = int(ks);
    } else {
      size = kty == "RSA" ? 2048 : 256;
    }
    static const std::vector<std::string> kOps = {"encrypt", "decrypt", "sign", "verify",
                                                  "wrapKey", "unwrapKey"};
    if (b.contains("key_ops") && !b["key_ops"].is_null()) {
      if (!b["key_ops"].is_array()) return Error(400, "BadParameter", "'key_ops' must be an array");
      ops = json::array();
      for (auto& o : b["key_ops"]) {
        if (!o.is_string() || std::find(kOps.begin(), kOps.end(), o.get<std::string>()) == kOps.end())
          return Error(400, "BadParameter", "unknown key operation in 'key_ops'");
        ops.push_back(o);
      }
    } else {
      ops = json::array({"wrapKey", "unwrapKey"});
    }
    if (Status s = ParseTags(b.value("tags", json()), v.tags_json); !s.ok())
      return Error(400, "BadParameter", s.message());
    if (Status s = ParseAttributes(b.value("attributes", json()), v); !s.ok())
      return Error(400, "BadParameter", s.message());
  }
  auto km = kty == "RSA" ? KeyMaterial::GenerateRsa(size) : KeyMaterial::GenerateOct(size);
  if (!km.ok()) return FromStatus(km.status(), "KeyNotFound");
  json meta = {{"kty", kty}, {"key_size", size}, {"key_ops", ops}};
  if ((*km)->is_rsa()) {
    meta["n"] = Base64UrlEncode((*km)->modulus());
    meta["e"] = Base64UrlEncode((*km)->exponent());
  }
  v.meta_json = meta.dump();
  auto ver = NewVersion();
  if (!ver.ok()) return FromStatus(ver.status(), "KeyNotFound");
  v.version = *ver;
  v.created = v.updated = c.now;
  auto priv = (*km)->Serialize();
  if (!priv.ok()) return FromStatus(priv.status(), "KeyNotFound");
  auto sealed = master_.Seal(priv->span(), "keys/" + v.name + "/" + v.version);
  if (!sealed.ok()) return FromStatus(sealed.status(), "KeyNotFound");
  v.sealed = std::move(*sealed);
  Status added = store_->AddVersion(v, c.machine);
  Invalidate(Kind::kKey, v.name);
  if (!added.ok()) return FromStatus(added, "KeyNotFound");
  c.version = v.version;
  {
    std::unique_lock lock(cache_mu_);
    key_cache_[v.name + "/" + v.version] = *km;
  }
  return Ok(200, c.KeyBundle(v));
}

ApiResponse VaultService::GetKey(Call& c) {
  auto cached = CachedGet(Kind::kKey, c.name, c.version);
  if (!cached.ok()) return FromStatus(cached.status(), "KeyNotFound");
  const ObjectVersion* v = cached->get();
  c.version = v->version;
  return Ok(200, c.KeyBundle(*v));
}

Result<std::shared_ptr<KeyMaterial>> VaultService::LoadKey(const ObjectVersion& v) {
  std::string id = v.name + "/" + v.version;
  {
    std::shared_lock lock(cache_mu_);
    if (auto it = key_cache_.find(id); it != key_cache_.end()) return it->second;
  }
  DS_ASSIGN_OR_RETURN(SecureBuffer raw, master_.Open(v.sealed, "keys/" + id));
  json meta = json::parse(v.meta_json, nullptr, false);
  DS_ASSIGN_OR_RETURN(auto km, KeyMaterial::Deserialize(meta.value("kty", ""), raw.span()));
  std::unique_lock lock(cache_mu_);
  key_cache_[id] = km;
  return km;
}

ApiResponse VaultService::WrapUnwrap(Call& c, bool wrap) {
  const json& b = c.body;
  if (!b.contains("alg") || !b["alg"].is_string())
    return Error(400, "BadParameter", "'alg' is required: RSA-OAEP, RSA-OAEP-256 or A256KW");
  if (!b.contains("value") || !b["value"].is_string())
    return Error(400, "BadParameter", "'value' is required and must be a base64url string");
  auto alg = ParseWrapAlg(b["alg"].get<std::string>());
  if (!alg.ok()) return Error(400, "BadParameter", alg.status().message());
  auto data = DecodeB64Any(b["value"].get<std::string>());
  if (!data) return Error(400, "BadParameter", "'value' is not valid base64url");
  if (!wrap && c.unwrap_needs_registry) {
    auto owner = store_->GetMeta(CiphertextKey(*data));
    if (!owner.ok() && owner.status().code() != Code::kNotFound)
      return FromStatus(owner.status(), "KeyNotFound");
    if (!owner.ok() || std::string(owner->begin(), owner->end()) != c.machine)
      return Error(403, "Forbidden",
                   "token '" + c.token_name + "' of machine '" + c.machine + "' may unwrap with key " +
                       c.name + " only a value that a secret of its machine holds",
                   "ForbiddenByPolicy");
  }
  auto cached = CachedGet(Kind::kKey, c.name, c.version);
  if (!cached.ok()) return FromStatus(cached.status(), "KeyNotFound");
  const ObjectVersion* v = cached->get();
  c.version = v->version;
  if (std::string why = c.Unusable(*v); !why.empty())
    return Error(403, "Forbidden", "Operation " + std::string(wrap ? "wrapKey" : "unwrapKey") +
                                       " is not allowed on a " + why + " key.", "KeyDisabled");
  json meta = json::parse(v->meta_json, nullptr, false);
  std::string need = wrap ? "wrapKey" : "unwrapKey";
  json ops = meta.value("key_ops", json::array());
  if (std::find(ops.begin(), ops.end(), need) == ops.end())
    return Error(403, "Forbidden", "Operation " + need + " is not permitted on this key (key_ops)",
                 "KeyOperationForbidden");
  auto km = LoadKey(*v);
  if (!km.ok()) return FromStatus(km.status(), "KeyNotFound");
  json j = {{"kid", c.Id(v->version)}};
  if (wrap) {
    auto out = (*km)->Wrap(*alg, *data);
    if (!out.ok()) return FromStatus(out.status(), "KeyNotFound");
    j["value"] = Base64UrlEncode(*out);
    return Ok(200, j);
  }
  std::span<uint8_t> scratch = Scratch(std::max<size_t>(data->size(), 512));
  Result<size_t> n = size_t(0);
  {
    // RSA private operations are pure CPU: running more at once than there are cores only adds
    // preemption in the middle of them, which is what makes the slowest requests slow.
    CpuSlot slot;
    n = (*km)->UnwrapInto(*alg, *data, scratch);
  }
  if (!n.ok()) return FromStatus(n.status(), "KeyNotFound");
  j["value"] = Base64UrlEncode(scratch.first(*n));
  OPENSSL_cleanse(scratch.data(), scratch.size());
  ApiResponse r = Ok(200, j);
  std::string& s = j["value"].get_ref<std::string&>();
  OPENSSL_cleanse(s.data(), s.size());
  return r;
}

}  // namespace ds::vault
