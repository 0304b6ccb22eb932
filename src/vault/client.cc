#include "vault/client.h"

#include <curl/curl.h>
#include <openssl/crypto.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include <strings.h>

#include <nlohmann/json.hpp>

namespace ds::vault {

using json = nlohmann::json;

namespace {

bool ValidName(const std::string& s) {
  return !s.empty() && s.size() <= 127 &&
         std::all_of(s.begin(), s.end(), [](char c) { return std::isalnum(uint8_t(c)) || c == '-'; });
}
bool ValidVersion(const std::string& s) {
  return s.size() <= 64 && std::all_of(s.begin(), s.end(), [](char c) { return std::isalnum(uint8_t(c)); });
}
Status CheckName(const std::string& name, const std::string& version) {
  if (!ValidName(name))
    return InvalidArgument("vault object name '" + name + "' must be 1-127 of 0-9, a-z, A-Z and -");
  if (!ValidVersion(version)) return InvalidArgument("vault object version '" + version + "' is not valid");
  return Status::Ok();
}

size_t WriteBody(char* data, size_t size, size_t n, void* user) {
  static_cast<std::string*>(user)->append(data, size * n);
  return size * n;
}

size_t WriteHeader(char* data, size_t size, size_t n, void* user) {
  std::string_view line(data, size * n);
  constexpr std::string_view kName = "www-authenticate:";
  if (line.size() > kName.size() && strncasecmp(line.data(), kName.data(), kName.size()) == 0) {
    std::string v(line.substr(kName.size()));
    while (!v.empty() && (v.back() == '\r' || v.back() == '\n' || v.back() == ' ')) v.pop_back();
    while (!v.empty() && v.front() == ' ') v.erase(0, 1);
    *static_cast<std::string*>(user) = v;
  }
  return size * n;
}

// The stage a libcurl failure happened in, for "vault https://x: <stage>: <detail>".
const char* Stage(CURLcode rc) {
  switch (rc) {
    case CURLE_COULDNT_RESOLVE_HOST: return "cannot resolve the host name (DNS)";
    case CURLE_COULDNT_RESOLVE_PROXY: return "cannot resolve the proxy (https_proxy)";
    case CURLE_COULDNT_CONNECT: return "cannot connect (refused, unreachable or blocked by a firewall)";
    case CURLE_OPERATION_TIMEDOUT: return "timed out";
    case CURLE_SSL_CONNECT_ERROR: return "TLS handshake failed";
    case CURLE_PEER_FAILED_VERIFICATION: return "TLS: the server certificate does not verify (wrong --vault-ca or host name)";
    case CURLE_SSL_CACERT_BADFILE: return "TLS: cannot read the CA file";
    case CURLE_SSL_CERTPROBLEM: case CURLE_SSL_CIPHER: return "TLS setup failed";
    case CURLE_SEND_ERROR: case CURLE_RECV_ERROR: case CURLE_GOT_NOTHING: return "connection dropped";
    case CURLE_UNSUPPORTED_PROTOCOL: case CURLE_URL_MALFORMAT: return "bad URL";
    default: return "request failed";
  }
}

// The stage of VaultClient::TransportFailure for a libcurl failure (see client.h).
std::string StageId(CURLcode rc, CURL* h, bool proxied) {
  long proxy_code = 0;
  curl_easy_getinfo(h, CURLINFO_HTTP_CONNECTCODE, &proxy_code);
  if (proxied && proxy_code != 0 && (proxy_code < 200 || proxy_code >= 300)) return "proxy";
  curl_off_t connected = 0, tls = 0;
  curl_easy_getinfo(h, CURLINFO_CONNECT_TIME_T, &connected);
  curl_easy_getinfo(h, CURLINFO_APPCONNECT_TIME_T, &tls);
  switch (rc) {
    case CURLE_UNSUPPORTED_PROTOCOL: case CURLE_URL_MALFORMAT: return "url";
    case CURLE_COULDNT_RESOLVE_PROXY: return "proxy";
    case CURLE_COULDNT_RESOLVE_HOST: return proxied ? "proxy" : "dns";
    case CURLE_COULDNT_CONNECT: return proxied ? "proxy" : "tcp";
    case CURLE_PEER_FAILED_VERIFICATION: case CURLE_SSL_CACERT_BADFILE: return "tls-verify";
    case CURLE_SSL_CONNECT_ERROR: case CURLE_SSL_CERTPROBLEM: case CURLE_SSL_CIPHER: return "tls";
    case CURLE_OPERATION_TIMEDOUT:
      return connected == 0 ? (proxied ? "proxy" : "tcp") : tls == 0 ? "tls" : "timeout";
    case CURLE_SEND_ERROR: case CURLE_RECV_ERROR: case CURLE_GOT_NOTHING:
      return connected == 0 ? (proxied ? "proxy" : "tcp") : tls == 0 ? "tls" : "http";
    default: return "request";
  }
}

std::string CleanToken(std::string t) {
  while (!t.empty() && (t.back() == '\n' || t.back() == '\r' || t.back() == ' ' || t.back() == '\t'))
    t.pop_back();
  return t;
}

SecretBundle ParseSecret(const json& j) {
  SecretBundle b;
  b.id = j.value("id", "");
  if (auto p = ParseObjectId(b.id, "secrets"); p.ok()) {
    b.name = p->first;
    b.version = p->second;
  }
  if (j.contains("value") && j["value"].is_string()) b.value = SecureBuffer(AsBytes(j["value"].get_ref<const std::string&>()));
  b.content_type = j.value("contentType", "");
  if (j.contains("tags") && j["tags"].is_object())
    for (auto it = j["tags"].begin(); it != j["tags"].end(); ++it)
      if (it.value().is_string()) b.tags[it.key()] = it.value().get<std::string>();
  if (j.contains("attributes") && j["attributes"].is_object()) {
    const json& a = j["attributes"];
    if (a.contains("enabled") && a["enabled"].is_boolean()) b.enabled = a["enabled"].get<bool>();
    if (a.contains("created") && a["created"].is_number()) b.created = a["created"].get<int64_t>();
    if (a.contains("updated") && a["updated"].is_number()) b.updated = a["updated"].get<int64_t>();
  }
  return b;
}

Result<KeyInfo> ParseKey(const json& j) {
  if (!j.contains("key") || !j["key"].is_object()) return Corrupt("vault reply has no 'key' object");
  const json& k = j["key"];
  KeyInfo info;
  info.kid = k.value("kid", "");
  info.kty = k.value("kty", "");
  DS_ASSIGN_OR_RETURN(auto nv, ParseObjectId(info.kid, "keys"));
  info.name = nv.first;
  info.version = nv.second;
  if (k.contains("key_ops") && k["key_ops"].is_array())
    for (auto& o : k["key_ops"])
      if (o.is_string()) info.key_ops.push_back(o.get<std::string>());
  if (k.contains("n") && k["n"].is_string()) {
    auto n = Base64UrlDecode(k["n"].get<std::string>());
    auto e = Base64UrlDecode(k.value("e", ""));
    if (!n || !e) return Corrupt("vault reply has a bad RSA public key");
    info.n = std::move(*n);
    info.e = std::move(*e);
  }
  return info;
}

void Wipe(std::string& s) { OPENSSL_cleanse(s.data(), s.size()); }

}  // namespace

std::string ProxyFor(const std::string& url) {
  auto env = [](const char* a, const char* b) -> std::string {
    const char* v = std::getenv(a);
    if (!v || !*v) v = std::getenv(b);
    return v ? v : "";
  };
  std::string proxy = env("https_proxy", "HTTPS_PROXY");
  if (proxy.empty()) proxy = env("all_proxy", "ALL_PROXY");
  if (proxy.empty()) return "";
  size_t s = url.find("://");
  std::string host = s == std::string::npos ? url : url.substr(s + 3);
  host = host.substr(0, host.find('/'));
  if (!host.empty() && host[0] == '[') host = host.substr(1, host.find(']') - 1);
  else host = host.substr(0, host.find(':'));
  std::string no = env("no_proxy", "NO_PROXY");
  size_t at = 0;
  while (at <= no.size()) {
    size_t comma = no.find(',', at);
    std::string e = no.substr(at, comma == std::string::npos ? std::string::npos : comma - at);
    at = comma == std::string::npos ? no.size() + 1 : comma + 1;
    e.erase(0, e.find_first_not_of(' '));
    while (!e.empty() && e.back() == ' ') e.pop_back();
    if (!e.empty() && e[0] == '.') e.erase(0, 1);
    if (e.empty()) continue;
    if (e == "*" || strcasecmp(e.c_str(), host.c_str()) == 0) return "";
    if (host.size() > e.size() && host[host.size() - e.size() - 1] == '.' &&
        strcasecmp(host.c_str() + host.size() - e.size(), e.c_str()) == 0)
      return "";
  }
  return proxy;
}

Result<std::pair<std::string, std::string>> ParseObjectId(const std::string& id,
                                                          const std::string& area) {
  // https://host[:port]/<area>/<name>/<version>
  size_t scheme = id.find("://");
  size_t path = scheme == std::string::npos ? std::string::npos : id.find('/', scheme + 3);
  if (path == std::string::npos) return InvalidArgument("'" + id + "' is not a vault object URL");
  std::string p = id.substr(path + 1);
  std::string prefix = area + "/";
  if (p.rfind(prefix, 0) != 0) return InvalidArgument("'" + id + "' is not a " + area + " URL");
  p = p.substr(prefix.size());
  size_t slash = p.find('/');
  std::string name = p.substr(0, slash), version = slash == std::string::npos ? "" : p.substr(slash + 1);
  DS_RETURN_IF_ERROR(CheckName(name, version));
  return std::make_pair(name, version);
}

Result<std::unique_ptr<VaultClient>> VaultClient::Create(Env& env, const VaultClientOptions& opts) {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
  if (opts.url.rfind("https://", 0) != 0)
    return InvalidArgument("vault URL '" + opts.url +
                           "' must start with https:// (bearer tokens are never sent in clear)");
  std::string token;
  if (!opts.token_file.empty()) {
    DS_ASSIGN_OR_RETURN(token, env.ReadFile(opts.token_file, 64 * 1024));
  } else if (!opts.token_env.empty()) {
    const char* v = std::getenv(opts.token_env.c_str());
    if (!v || !*v) return InvalidArgument("environment variable " + opts.token_env + " holding the vault token is not set");
    token = v;
  } else {
    return InvalidArgument("the vault needs a token: --vault-token-file or --vault-token-env");
  }
  token = CleanToken(std::move(token));
  bool printable = !token.empty() && std::all_of(token.begin(), token.end(),
                                                 [](char c) { return c > 0x20 && c < 0x7f; });
  if (!printable) {
    Wipe(token);
    return InvalidArgument("the vault token " +
                           (opts.token_file.empty() ? "in $" + opts.token_env : "in " + opts.token_file) +
                           " is empty or holds characters a token cannot have");
  }
  std::unique_ptr<VaultClient> c(new VaultClient());
  c->opts_ = opts;
  c->base_ = opts.url;
  while (!c->base_.empty() && c->base_.back() == '/') c->base_.pop_back();
  std::string header = "Authorization: Bearer " + token;
  c->auth_header_ = SecureBuffer(header.size() + 1);
  std::memcpy(c->auth_header_.data(), header.c_str(), header.size() + 1);
  Wipe(header);
  Wipe(token);
  c->curl_ = curl_easy_init();
  if (!c->curl_) return Internal("curl_easy_init failed");
  return c;
}

VaultClient::~VaultClient() {
  if (curl_) curl_easy_cleanup(static_cast<CURL*>(curl_));
}

Result<HttpReply> VaultClient::Call(const std::string& method, const std::string& path_query,
                                    const std::string& body) {
  CURL* h = static_cast<CURL*>(curl_);
  curl_easy_reset(h);  // keeps the connection cache: the next call reuses the TLS session
  std::string url = base_ + path_query +
                    (path_query.find('?') == std::string::npos ? "?" : "&") +
                    "api-version=" + opts_.api_version;
  HttpReply reply;
  char errbuf[CURL_ERROR_SIZE] = {0};
  curl_slist* headers = nullptr;
  headers = curl_slist_append(headers, reinterpret_cast<const char*>(auth_header_.data()));
  headers = curl_slist_append(headers, "Content-Type: application/json");
  headers = curl_slist_append(headers, "Accept: application/json");
  curl_easy_setopt(h, CURLOPT_URL, url.c_str());
  curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method.c_str());
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "https");
  curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, opts_.connect_timeout_ms);
  curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, opts_.timeout_ms);
  curl_easy_setopt(h, CURLOPT_SSLVERSION, long(CURL_SSLVERSION_TLSv1_2));
  if (!opts_.ca_file.empty()) curl_easy_setopt(h, CURLOPT_CAINFO, opts_.ca_file.c_str());
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, WriteBody);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, &reply.body);
  curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, WriteHeader);
  curl_easy_setopt(h, CURLOPT_HEADERDATA, &reply.www_authenticate);
  if (method != "GET" && method != "DELETE") {
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body.data());
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, long(body.size()));
  }
  last_failure_ = {};
  CURLcode rc = curl_easy_perform(h);
  curl_slist_free_all(headers);
  if (rc != CURLE_OK) {
    last_failure_.stage = StageId(rc, h, !ProxyFor(base_).empty());
    last_failure_.detail = errbuf[0] ? errbuf : curl_easy_strerror(rc);
  }
  if (rc != CURLE_OK)
    return NetworkError("vault " + base_ + ": " + Stage(rc) + ": " +
                        (errbuf[0] ? errbuf : curl_easy_strerror(rc)));
  curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &reply.status);
  return reply;
}

Result<HttpReply> VaultClient::CallOk(const std::string& method, const std::string& path_query,
                                      const std::string& body, const std::string& what) {
  DS_ASSIGN_OR_RETURN(HttpReply r, Call(method, path_query, body));
  if (r.status >= 200 && r.status < 300) return r;
  std::string reason;
  json e = json::parse(r.body, nullptr, false);
  if (e.is_object() && e.contains("error") && e["error"].is_object())
    reason = e["error"].value("code", "") + ": " + e["error"].value("message", "");
  else
    reason = r.body.substr(0, 200);
  std::string msg = "vault " + base_ + ": " + what + ": HTTP " + std::to_string(r.status) +
                    (reason.empty() ? "" : " " + reason);
  switch (r.status) {
    case 400: return InvalidArgument(msg);
    case 401: case 403: return PermissionDenied(msg);
    case 404: return NotFound(msg);
    case 409: return Busy(msg);
    default: return NetworkError(msg);
  }
}

Result<SecretBundle> VaultClient::SetSecret(const std::string& name, std::span<const uint8_t> value,
                                            const std::string& content_type, const Tags& tags) {
  DS_RETURN_IF_ERROR(CheckName(name, ""));
  json j = {{"value", std::string(reinterpret_cast<const char*>(value.data()), value.size())}};
  if (!content_type.empty()) j["contentType"] = content_type;
  if (!tags.empty()) j["tags"] = tags;
  std::string body = j.dump(-1, ' ', false, json::error_handler_t::replace);
  Wipe(j["value"].get_ref<std::string&>());
  auto r = CallOk("PUT", "/secrets/" + name, body, "set secret " + name);
  Wipe(body);
  if (!r.ok()) return r.status();
  json out = json::parse(r->body, nullptr, false);
  Wipe(r->body);
  if (!out.is_object()) return Corrupt("vault " + base_ + ": set secret " + name + ": reply is not JSON");
  SecretBundle b = ParseSecret(out);
  if (out.contains("value") && out["value"].is_string()) Wipe(out["value"].get_ref<std::string&>());
  return b;
}

Result<SecretBundle> VaultClient::GetSecret(const std::string& name, const std::string& version) {
  DS_RETURN_IF_ERROR(CheckName(name, version));
  std::string what = "get secret " + name + (version.empty() ? "" : "/" + version);
  DS_ASSIGN_OR_RETURN(HttpReply r, CallOk("GET", "/secrets/" + name + "/" + version, "", what));
  json out = json::parse(r.body, nullptr, false);
  Wipe(r.body);
  if (!out.is_object() || !out.contains("value") || !out["value"].is_string())
    return Corrupt("vault " + base_ + ": " + what + ": reply has no value");
  SecretBundle b = ParseSecret(out);
  Wipe(out["value"].get_ref<std::string&>());
  return b;
}

Result<std::vector<SecretBundle>> VaultClient::ListSecretVersions(const std::string& name) {
  DS_RETURN_IF_ERROR(CheckName(name, ""));
  std::vector<SecretBundle> all;
  std::string path = "/secrets/" + name + "/versions?maxresults=25";
  for (int page = 0; page < 10000; ++page) {
    DS_ASSIGN_OR_RETURN(HttpReply r, CallOk("GET", path, "", "list versions of secret " + name));
    json out = json::parse(r.body, nullptr, false);
    if (!out.is_object() || !out.contains("value") || !out["value"].is_array())
      return Corrupt("vault " + base_ + ": list versions of " + name + ": reply has no value array");
    for (auto& item : out["value"]) all.push_back(ParseSecret(item));
    if (!out.contains("nextLink") || !out["nextLink"].is_string()) return all;
    // nextLink is absolute and already carries api-version; keep only its path and query minus
    // api-version, which Call() appends.
    std::string next = out["nextLink"].get<std::string>();
    size_t p = next.find("/secrets/");
    if (p == std::string::npos) return Corrupt("vault " + base_ + ": bad nextLink " + next);
    path = next.substr(p);
    size_t av = path.find("api-version=");
    if (av != std::string::npos) {
      size_t end = path.find('&', av);
      path.erase(av, end == std::string::npos ? std::string::npos : end + 1 - av);
      while (!path.empty() && (path.back() == '&' || path.back() == '?')) path.pop_back();
    }
  }
  return Internal("vault " + base_ + ": too many pages of versions of " + name);
}

Status VaultClient::SetSecretEnabled(const std::string& name, const std::string& version, bool enabled) {
  DS_RETURN_IF_ERROR(CheckName(name, version));
  json j = {{"attributes", {{"enabled", enabled}}}};
  auto r = CallOk("PATCH", "/secrets/" + name + "/" + version, j.dump(),
                  "update secret " + name + "/" + version);
  return r.status();
}

Result<KeyInfo> VaultClient::CreateKey(const std::string& name, const std::string& kty, int size) {
  DS_RETURN_IF_ERROR(CheckName(name, ""));
  json j = {{"kty", kty}, {"key_size", size}, {"key_ops", {"wrapKey", "unwrapKey"}}};
  DS_ASSIGN_OR_RETURN(HttpReply r, CallOk("POST", "/keys/" + name + "/create", j.dump(), "create key " + name));
  json out = json::parse(r.body, nullptr, false);
  if (!out.is_object()) return Corrupt("vault " + base_ + ": create key " + name + ": reply is not JSON");
  return ParseKey(out);
}

Result<KeyInfo> VaultClient::GetKey(const std::string& name, const std::string& version) {
  DS_RETURN_IF_ERROR(CheckName(name, version));
  DS_ASSIGN_OR_RETURN(HttpReply r, CallOk("GET", "/keys/" + name + "/" + version, "", "get key " + name));
  json out = json::parse(r.body, nullptr, false);
  if (!out.is_object()) return Corrupt("vault " + base_ + ": get key " + name + ": reply is not JSON");
  return ParseKey(out);
}

Result<std::pair<std::string, Bytes>> VaultClient::WrapKey(const std::string& name,
                                                           const std::string& version,
                                                           const std::string& alg,
                                                           std::span<const uint8_t> plaintext) {
  DS_RETURN_IF_ERROR(CheckName(name, version));
  json j = {{"alg", alg}, {"value", Base64UrlEncode(plaintext)}};
  std::string body = j.dump();
  Wipe(j["value"].get_ref<std::string&>());
  auto r = CallOk("POST", "/keys/" + name + "/" + version + "/wrapkey", body, "wrap with key " + name);
  Wipe(body);
  if (!r.ok()) return r.status();
  json out = json::parse(r->body, nullptr, false);
  if (!out.is_object() || !out.contains("value") || !out["value"].is_string())
    return Corrupt("vault " + base_ + ": wrap with key " + name + ": reply has no value");
  auto bytes = Base64UrlDecode(out["value"].get<std::string>());
  if (!bytes) return Corrupt("vault " + base_ + ": wrap with key " + name + ": value is not base64url");
  return std::make_pair(out.value("kid", ""), std::move(*bytes));
}

Result<SecureBuffer> VaultClient::UnwrapKey(const std::string& name, const std::string& version,
                                            const std::string& alg, std::span<const uint8_t> wrapped) {
  DS_RETURN_IF_ERROR(CheckName(name, version));
  json j = {{"alg", alg}, {"value", Base64UrlEncode(wrapped)}};
  DS_ASSIGN_OR_RETURN(HttpReply r, CallOk("POST", "/keys/" + name + "/" + version + "/unwrapkey",
                                          j.dump(), "unwrap with key " + name));
  json out = json::parse(r.body, nullptr, false);
  Wipe(r.body);
  if (!out.is_object() || !out.contains("value") || !out["value"].is_string())
    return Corrupt("vault " + base_ + ": unwrap with key " + name + ": reply has no value");
  std::string& v = out["value"].get_ref<std::string&>();
  auto bytes = Base64UrlDecode(v);
  Wipe(v);
  if (!bytes) return Corrupt("vault " + base_ + ": unwrap with key " + name + ": value is not base64url");
  SecureBuffer plain(*bytes);
  OPENSSL_cleanse(bytes->data(), bytes->size());
  return plain;
}

}  // namespace ds::vault
