// The vault as a real process on loopback, driven over HTTPS: API conformance, the authorization
// matrix, TLS only, restart and kill -9 durability, hostile input, audit, backup/restore.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include <atomic>
#include <mutex>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "testlib.h"
#include "vault/client.h"
#include "vault/vault_crypto.h"
#include "vault/vault_dir.h"
#include "vault_testutil.h"

namespace ds::test {
namespace {

using json = nlohmann::json;
using vault::VaultClient;

class VaultServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    vault_ = std::make_unique<VaultProcess>(tmp_ / "vault");
    vault_->Start();
    admin_token_ = vault_->Token("admin", "all");
    admin_ = Client(*vault_, admin_token_);
  }
  // 4xx with an error body in the API's shape, and the server still serving.
  void ExpectClientError(const std::string& method, const std::string& path, const std::string& body,
                         int want = 0) {
    SCOPED_TRACE(method + " " + path.substr(0, 80) + " body=" + body.substr(0, 60));
    auto r = admin_->Call(method, path, body);
    ASSERT_TRUE(r.ok()) << r.status().message();
    if (want) {
      EXPECT_EQ(r->status, want) << r->body;
    }
    EXPECT_GE(r->status, 400);
    EXPECT_LT(r->status, 500) << r->body;
    json j = Body(*r);
    ASSERT_TRUE(j.is_object()) << r->body;
    ASSERT_TRUE(j.contains("error")) << r->body;
    EXPECT_TRUE(j["error"]["code"].is_string());
    EXPECT_TRUE(j["error"]["message"].is_string());
    ASSERT_TRUE(vault_->Alive());
  }
  TempDir tmp_;
  std::unique_ptr<VaultProcess> vault_;
  std::string admin_token_;
  std::unique_ptr<VaultClient> admin_;
};

TEST_F(VaultServerTest, SecretsConformance) {
  vault::Tags tags = {{"DiskEncryptionKeyFileName", "LinuxPassPhraseFileName"}, {"MachineName", "vm1"}};
  auto v1 = admin_->SetSecret("disk-1", AsBytes("first"), "BEK", tags);
  ASSERT_TRUE(v1.ok()) << v1.status().message();
  EXPECT_EQ(v1->id, vault_->url() + "/secrets/disk-1/" + v1->version);
  auto v2 = admin_->SetSecret("disk-1", AsBytes("second"), "BEK", tags);
  ASSERT_TRUE(v2.ok());
  EXPECT_NE(v1->version, v2->version);
  auto latest = admin_->GetSecret("disk-1");
  ASSERT_TRUE(latest.ok());
  EXPECT_EQ(latest->value.view(), "second");
  EXPECT_EQ(latest->content_type, "BEK");
  EXPECT_EQ(latest->tags, tags);
  EXPECT_EQ(admin_->GetSecret("disk-1", v1->version)->value.view(), "first");

  // Versions are paged: 30 versions, 10 a page, nextLink carries on.
  for (int i = 0; i < 28; ++i) ASSERT_TRUE(admin_->SetSecret("disk-1", AsBytes("v"), "", {}).ok());
  auto page = admin_->Call("GET", "/secrets/disk-1/versions?maxresults=10", "");
  ASSERT_TRUE(page.ok());
  json p = Body(*page);
  ASSERT_EQ(p["value"].size(), 10u);
  EXPECT_FALSE(p["value"][0].contains("value"));  // listings never carry values
  EXPECT_TRUE(p["nextLink"].is_string());
  auto all = admin_->ListSecretVersions("disk-1");
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->size(), 30u);

  // Update attributes/tags/contentType of one version.
  auto patch = admin_->Call("PATCH", "/secrets/disk-1/" + v1->version,
                            R"({"contentType":"text","tags":{"t":"1"},"attributes":{"exp":4102444800}})");
  ASSERT_EQ(patch->status, 200) << patch->body;
  json pj = Body(*patch);
  EXPECT_EQ(pj["contentType"], "text");
  EXPECT_EQ(pj["attributes"]["exp"], 4102444800);
  EXPECT_EQ(admin_->GetSecret("disk-1", v1->version)->tags.at("t"), "1");

  // Soft delete, list deleted, recover; delete again and purge.
  auto del = admin_->Call("DELETE", "/secrets/disk-1", "");
  ASSERT_EQ(del->status, 200);
  EXPECT_EQ(Body(*del)["recoveryId"], vault_->url() + "/deletedsecrets/disk-1");
  EXPECT_EQ(admin_->GetSecret("disk-1").status().code(), Code::kNotFound);
  EXPECT_EQ(admin_->SetSecret("disk-1", AsBytes("x"), "", {}).status().code(), Code::kBusy);
  auto listed = admin_->Call("GET", "/deletedsecrets", "");
  ASSERT_EQ(Body(*listed)["value"].size(), 1u);
  EXPECT_EQ(Body(*listed)["value"][0]["recoveryId"], vault_->url() + "/deletedsecrets/disk-1");
  ASSERT_EQ(admin_->Call("POST", "/deletedsecrets/disk-1/recover", "")->status, 200);
  EXPECT_EQ(admin_->GetSecret("disk-1")->value.view(), "v");
  ASSERT_EQ(admin_->Call("DELETE", "/secrets/disk-1", "")->status, 200);
  ASSERT_EQ(admin_->Call("DELETE", "/deletedsecrets/disk-1", "")->status, 204);
  EXPECT_EQ(admin_->Call("GET", "/deletedsecrets/disk-1", "")->status, 404);
  ASSERT_TRUE(admin_->SetSecret("disk-1", AsBytes("reborn"), "", {}).ok());
  // Listing objects names each object (no version), as Azure does.
  auto names = admin_->Call("GET", "/secrets", "");
  ASSERT_EQ(Body(*names)["value"].size(), 1u);
  EXPECT_EQ(Body(*names)["value"][0]["id"], vault_->url() + "/secrets/disk-1");

  // Both API generations ADE and the SDKs speak.
  auto old_api = VaultClient::Create(*PosixEnv(), [&] {
    auto o = vault_->ClientOptions(admin_token_);
    o.api_version = "2015-06-01";
    return o;
  }());
  ASSERT_TRUE(old_api.ok());
  EXPECT_EQ((*old_api)->GetSecret("disk-1")->value.view(), "reborn");
}

TEST_F(VaultServerTest, KeysConformance) {
  for (int bits : {2048, 3072, 4096}) {
    std::string name = "rsa" + std::to_string(bits);
    auto k = admin_->CreateKey(name, "RSA", bits);
    ASSERT_TRUE(k.ok()) << k.status().message();
    EXPECT_EQ(k->kty, "RSA");
    EXPECT_EQ(k->n.size(), size_t(bits / 8));
    EXPECT_EQ(HexEncode(k->e), "010001");
    auto got = admin_->Call("GET", "/keys/" + name, "");
    json g = Body(*got);
    EXPECT_FALSE(g["key"].contains("d"));  // never the private part
    EXPECT_FALSE(g["key"].contains("p"));
    for (const char* alg : {"RSA-OAEP", "RSA-OAEP-256"}) {
      auto w = admin_->WrapKey(name, "", alg, AsBytes("volume passphrase"));
      ASSERT_TRUE(w.ok()) << w.status().message();
      EXPECT_EQ(w->first, k->kid);
      EXPECT_EQ(w->second.size(), size_t(bits / 8));
      auto u = admin_->UnwrapKey(name, k->version, alg, w->second);
      ASSERT_TRUE(u.ok()) << u.status().message();
      EXPECT_EQ(u->view(), "volume passphrase");
    }
    // The published JWK is the real public key: wrapping offline with it unwraps in the vault.
    auto offline = vault::RsaPublicWrap(k->n, k->e, vault::WrapAlg::kRsaOaep256, AsBytes("offline"));
    ASSERT_TRUE(offline.ok());
    EXPECT_EQ(admin_->UnwrapKey(name, "", "RSA-OAEP-256", *offline)->view(), "offline");
  }
  auto oct = admin_->CreateKey("kek-oct", "oct", 256);
  ASSERT_TRUE(oct.ok()) << oct.status().message();
  auto w = admin_->WrapKey("kek-oct", "", "A256KW", AsBytes("0123456789abcdef01234567"));
  ASSERT_TRUE(w.ok());
  EXPECT_EQ(w->second.size(), 32u);
  EXPECT_EQ(admin_->UnwrapKey("kek-oct", "", "A256KW", w->second)->view(), "0123456789abcdef01234567");

  // Rotation: a new newest version; the old version still unwraps what it wrapped.
  auto before = admin_->WrapKey("rsa2048", "", "RSA-OAEP", AsBytes("old"));
  auto rotated = admin_->Call("POST", "/keys/rsa2048/rotate", "");
  ASSERT_EQ(rotated->status, 200) << rotated->body;
  std::string new_kid = Body(*rotated)["key"]["kid"];
  EXPECT_NE(new_kid, before->first);
  EXPECT_EQ(admin_->GetKey("rsa2048")->kid, new_kid);
  auto old_ver = vault::ParseObjectId(before->first, "keys");
  EXPECT_EQ(admin_->UnwrapKey("rsa2048", old_ver->second, "RSA-OAEP", before->second)->view(), "old");
  EXPECT_FALSE(admin_->UnwrapKey("rsa2048", "", "RSA-OAEP", before->second).ok());
  auto versions = admin_->Call("GET", "/keys/rsa2048/versions", "");
  EXPECT_EQ(Body(*versions)["value"].size(), 2u);
  // "/keys/name//wrapkey" (an SDK with an empty version) means the newest version.
  auto slash = admin_->Call("POST", "/keys/rsa2048//wrapkey", R"({"alg":"RSA-OAEP","value":"AAEC"})");
  EXPECT_EQ(Body(*slash)["kid"], new_kid);
  // A key made for wrapping only refuses to unwrap.
  ASSERT_EQ(admin_->Call("POST", "/keys/wraponly/create", R"({"kty":"oct","key_ops":["wrapKey"]})")->status, 200);
  auto wo = admin_->WrapKey("wraponly", "", "A256KW", AsBytes("0123456789abcdef"));
  ASSERT_TRUE(wo.ok());
  EXPECT_EQ(admin_->UnwrapKey("wraponly", "", "A256KW", wo->second).status().code(), Code::kPermissionDenied);
}

TEST_F(VaultServerTest, AuthorizationMatrix) {
  // Objects each allowed call can act on, so the holder of the right permission succeeds.
  auto s = admin_->SetSecret("s", AsBytes("value"), "", {});
  ASSERT_TRUE(s.ok());
  for (const char* n : {"s-del", "s-rec", "s-purge"}) ASSERT_TRUE(admin_->SetSecret(n, AsBytes("x"), "", {}).ok());
  auto k = admin_->CreateKey("k", "RSA", 2048);
  ASSERT_TRUE(k.ok());
  for (const char* n : {"ko", "k-del", "k-rec", "k-purge"}) ASSERT_TRUE(admin_->CreateKey(n, "oct", 256).ok());
  for (const char* p : {"/secrets/s-rec", "/secrets/s-purge", "/keys/k-rec", "/keys/k-purge"})
    ASSERT_EQ(admin_->Call("DELETE", p, "")->status, 200);
  auto wrapped = admin_->WrapKey("k", "", "RSA-OAEP", AsBytes("x"));
  ASSERT_TRUE(wrapped.ok());
  std::string w = Base64UrlEncode(wrapped->second);

  struct Endpoint {
    std::string method, path, body, perm;
    int ok_status;
  };
  const std::vector<Endpoint> endpoints = {
      {"GET", "/secrets", "", "secrets:list", 200},
      {"PUT", "/secrets/s", R"({"value":"v2"})", "secrets:set", 200},
      {"GET", "/secrets/s", "", "secrets:get", 200},
      {"GET", "/secrets/s/" + s->version, "", "secrets:get", 200},
      {"GET", "/secrets/s/versions", "", "secrets:list", 200},
      {"PATCH", "/secrets/s/" + s->version, R"({"tags":{"a":"b"}})", "secrets:set", 200},
      {"DELETE", "/secrets/s-del", "", "secrets:delete", 200},
      {"GET", "/deletedsecrets", "", "secrets:list", 200},
      {"GET", "/deletedsecrets/s-rec", "", "secrets:list", 200},
      {"POST", "/deletedsecrets/s-rec/recover", "", "secrets:recover", 200},
      {"DELETE", "/deletedsecrets/s-purge", "", "secrets:purge", 204},
      {"GET", "/keys", "", "keys:list", 200},
      {"POST", "/keys/k2/create", R"({"kty":"oct"})", "keys:create", 200},
      {"GET", "/keys/k", "", "keys:get", 200},
      {"GET", "/keys/k/" + k->version, "", "keys:get", 200},
      {"GET", "/keys/k/versions", "", "keys:list", 200},
      {"POST", "/keys/ko/rotate", "", "keys:rotate", 200},
      {"POST", "/keys/k/wrapkey", R"({"alg":"RSA-OAEP","value":"AAEC"})", "keys:wrap", 200},
      {"POST", "/keys/k/" + k->version + "/unwrapkey", R"({"alg":"RSA-OAEP","value":")" + w + "\"}",
       "keys:unwrap", 200},
      {"DELETE", "/keys/k-del", "", "keys:delete", 200},
      {"GET", "/deletedkeys", "", "keys:list", 200},
      {"GET", "/deletedkeys/k-rec", "", "keys:list", 200},
      {"POST", "/deletedkeys/k-rec/recover", "", "keys:recover", 200},
      {"DELETE", "/deletedkeys/k-purge", "", "keys:purge", 204},
  };
  // Every permission appears in the table, so the matrix is complete.
  for (const auto& perm : vault::AllPermissions()) {
    bool used = std::any_of(endpoints.begin(), endpoints.end(), [&](const Endpoint& e) { return e.perm == perm; });
    EXPECT_TRUE(used) << perm << " has no endpoint in the matrix";
  }
  std::map<std::string, std::unique_ptr<VaultClient>> clients;
  for (const auto& perm : vault::AllPermissions()) {
    std::string name = perm;
    std::replace(name.begin(), name.end(), ':', '-');
    clients[perm] = Client(*vault_, vault_->Token(name, perm));
  }
  for (const auto& e : endpoints) {
    for (const auto& [perm, client] : clients) {
      SCOPED_TRACE(e.method + " " + e.path + " with only " + perm);
      auto r = client->Call(e.method, e.path, e.body);
      ASSERT_TRUE(r.ok()) << r.status().message();
      if (perm == e.perm) {
        EXPECT_EQ(r->status, e.ok_status) << r->body;
      } else {
        ASSERT_EQ(r->status, 403) << r->body;
        json j = Body(*r);
        EXPECT_EQ(j["error"]["code"], "Forbidden");
        EXPECT_NE(j["error"]["message"].get<std::string>().find(e.perm), std::string::npos);
      }
    }
  }
  // The typed client error names the missing permission.
  auto denied = clients["keys:wrap"]->GetSecret("s");
  EXPECT_EQ(denied.status().code(), Code::kPermissionDenied);
  EXPECT_NE(denied.status().message().find("secrets:get"), std::string::npos);

  // Revocation takes effect on the next call, with a 401 challenge.
  RunResult rv = Diskseal({"vault", "token", "revoke", "--dir", vault_->dir(), "--name", "secrets-get"});
  ASSERT_EQ(rv.exit_code, 0) << rv.err;
  auto after = clients["secrets:get"]->Call("GET", "/secrets/s", "");
  EXPECT_EQ(after->status, 401);
  EXPECT_EQ(after->www_authenticate.rfind("Bearer ", 0), 0u);
  RunResult ls = Diskseal({"vault", "token", "list", "--dir", vault_->dir(), "--json"});
  ASSERT_EQ(ls.exit_code, 0);
  EXPECT_EQ(ls.out.find("dsv1."), std::string::npos);  // tokens themselves are never stored
}

TEST_F(VaultServerTest, UnauthenticatedGetsBearerChallenge) {
  std::string empty = tmp_ / "empty.token";
  WriteFile(empty, "not-a-token\n");
  auto c = Client(*vault_, empty);
  auto r = c->Call("GET", "/secrets/x", "");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 401);
  EXPECT_NE(r->www_authenticate.find("Bearer authorization=\""), std::string::npos);
  EXPECT_NE(r->www_authenticate.find("resource=\"" + vault_->url() + "\""), std::string::npos);
  EXPECT_EQ(Body(*r)["error"]["code"], "Unauthorized");
  EXPECT_EQ(c->GetSecret("x").status().code(), Code::kPermissionDenied);
}

TEST_F(VaultServerTest, TlsOnly) {
  // Plain HTTP to the port gets no HTTP answer: the server speaks TLS or nothing.
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(uint16_t(vault_->port()));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  std::string req = "GET /secrets/x?api-version=7.4 HTTP/1.1\r\nHost: x\r\n\r\n";
  ASSERT_EQ(::write(fd, req.data(), req.size()), ssize_t(req.size()));
  std::string got;
  char buf[4096];
  for (;;) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 30000) <= 0) break;
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n <= 0) break;
    got.append(buf, size_t(n));
  }
  ::close(fd);
  EXPECT_EQ(got.find("HTTP/1."), std::string::npos) << got;
  EXPECT_TRUE(vault_->Alive());

  // The client refuses http:// outright (a bearer token must never travel in clear) ...
  auto o = vault_->ClientOptions(admin_token_);
  o.url = "http://127.0.0.1:" + std::to_string(vault_->port());
  EXPECT_EQ(VaultClient::Create(*PosixEnv(), o).status().code(), Code::kInvalidArgument);
  // ... and a server it cannot verify is a network error naming TLS.
  o = vault_->ClientOptions(admin_token_);
  o.ca_file = "/etc/ssl/certs/ca-certificates.crt";
  if (::access(o.ca_file.c_str(), R_OK) != 0) o.ca_file = "";
  auto c = VaultClient::Create(*PosixEnv(), o);
  ASSERT_TRUE(c.ok());
  auto r = (*c)->GetSecret("x");
  EXPECT_EQ(r.status().code(), Code::kNetwork);
  EXPECT_NE(r.status().message().find("TLS"), std::string::npos) << r.status().message();
}

TEST_F(VaultServerTest, ClientErrorsAreTyped) {
  EXPECT_EQ(admin_->GetSecret("absent").status().code(), Code::kNotFound);
  EXPECT_EQ(admin_->GetSecret("bad_name").status().code(), Code::kInvalidArgument);
  // A port nobody listens on: a network error naming the connect stage.
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);  // bound then closed: nothing listens there
  auto o = vault_->ClientOptions(admin_token_);
  o.url = "https://127.0.0.1:" + std::to_string(ntohs(addr.sin_port));
  auto c = VaultClient::Create(*PosixEnv(), o);
  ASSERT_TRUE(c.ok());
  auto r = (*c)->GetSecret("x");
  EXPECT_EQ(r.status().code(), Code::kNetwork);
  EXPECT_NE(r.status().message().find("cannot connect"), std::string::npos) << r.status().message();
  o.url = "https://no-such-host.invalid";
  auto d = VaultClient::Create(*PosixEnv(), o);
  auto dr = (*d)->GetSecret("x");
  EXPECT_EQ(dr.status().code(), Code::kNetwork);
  EXPECT_NE(dr.status().message().find("resolve"), std::string::npos) << dr.status().message();
}

TEST_F(VaultServerTest, ClientHonoursHttpsProxyAndNoProxy) {
  ASSERT_TRUE(admin_->SetSecret("p", AsBytes("via proxy settings"), "", {}).ok());
  // A proxy address where nothing listens: if the client uses it, the call fails at the proxy.
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  std::string proxy = "http://127.0.0.1:" + std::to_string(ntohs(addr.sin_port));
  ::setenv("https_proxy", proxy.c_str(), 1);
  ::unsetenv("no_proxy");
  ::unsetenv("NO_PROXY");
  auto via = Client(*vault_, admin_token_)->GetSecret("p");
  EXPECT_EQ(via.status().code(), Code::kNetwork);
  EXPECT_NE(via.status().message().find("port " + std::to_string(ntohs(addr.sin_port))),
            std::string::npos) << via.status().message();  // it went to the proxy
  ::setenv("no_proxy", "127.0.0.1", 1);
  auto direct = Client(*vault_, admin_token_)->GetSecret("p");
  ::unsetenv("https_proxy");
  ::unsetenv("no_proxy");
  ASSERT_TRUE(direct.ok()) << direct.status().message();
  EXPECT_EQ(direct->value.view(), "via proxy settings");
}

TEST_F(VaultServerTest, HostileInputGets4xxAndServerSurvives) {
  ASSERT_TRUE(admin_->CreateKey("k", "RSA", 2048).ok());
  ASSERT_TRUE(admin_->SetSecret("ok", AsBytes("fine"), "", {}).ok());
  ExpectClientError("PUT", "/secrets/x", "{", 400);
  ExpectClientError("PUT", "/secrets/x", "", 400);
  ExpectClientError("PUT", "/secrets/x", "[]", 400);
  ExpectClientError("PUT", "/secrets/x", "\"value\"", 400);
  ExpectClientError("PUT", "/secrets/x", R"({"value":5})", 400);
  ExpectClientError("PUT", "/secrets/x", R"({"value":null})", 400);
  ExpectClientError("PUT", "/secrets/x", R"({"value":"a","contentType":{}})", 400);
  ExpectClientError("PUT", "/secrets/x", R"({"value":"a","tags":"no"})", 400);
  ExpectClientError("PUT", "/secrets/x", R"({"value":"a","tags":{"k":1}})", 400);
  ExpectClientError("PUT", "/secrets/x", R"({"value":"a","attributes":[]})", 400);
  ExpectClientError("PUT", "/secrets/x", R"({"value":"a","attributes":{"enabled":"maybe"}})", 400);
  ExpectClientError("PUT", "/secrets/x", R"({"value":"a","attributes":{"exp":"tomorrow"}})", 400);
  ExpectClientError("PUT", "/secrets/x", R"({"value":"a","attributes":{"nbf":-5}})", 400);
  ExpectClientError("PUT", "/secrets/x", "{\"value\":\"\xff\xfe\"}", 400);  // not UTF-8
  ExpectClientError("PUT", "/secrets/x", json{{"value", std::string(26 * 1024, 'a')}}.dump(), 400);
  ExpectClientError("PUT", "/secrets/x", std::string(2 << 20, '{'), 413);
  ExpectClientError("PUT", "/secrets/x", std::string(200000, '[') + std::string(200000, ']'), 400);
  ExpectClientError("PUT", "/secrets/bad_name", R"({"value":"a"})", 400);
  ExpectClientError("PUT", "/secrets/" + std::string(200, 'a'), R"({"value":"a"})", 400);
  ExpectClientError("GET", "/secrets/%00x", "", 400);
  ExpectClientError("GET", "/secrets/%FF%FE%C0", "", 400);
  ExpectClientError("GET", "/secrets/..%2F..%2Fetc%2Fpasswd", "");
  ExpectClientError("GET", "/secrets/ok/" + std::string(70, 'a'), "", 400);
  ExpectClientError("GET", "/secrets/ok/versions?maxresults=0", "", 400);
  ExpectClientError("GET", "/secrets/ok/versions?maxresults=abc", "", 400);
  ExpectClientError("GET", "/secrets/ok/versions?$skiptoken=-1", "", 400);
  ExpectClientError("GET", "/secrets/" + std::string(10000, 'a'), "");  // URI too long
  ExpectClientError("POST", "/keys/k/wrapkey", R"({"alg":"RSA-OAEP","value":"!!!"})", 400);
  ExpectClientError("POST", "/keys/k/wrapkey", R"({"alg":"RSA1_5","value":"AAAA"})", 400);
  ExpectClientError("POST", "/keys/k/wrapkey", R"({"alg":5,"value":"AAAA"})", 400);
  ExpectClientError("POST", "/keys/k/wrapkey", R"({"alg":"RSA-OAEP"})", 400);
  ExpectClientError("POST", "/keys/k/wrapkey", R"({"alg":"A256KW","value":"AAAAAAAAAAAAAAAAAAAAAA"})", 400);
  ExpectClientError("POST", "/keys/k/wrapkey",
                    json{{"alg", "RSA-OAEP"}, {"value", Base64UrlEncode(Bytes(300, 1))}}.dump(), 400);
  ExpectClientError("POST", "/keys/k/unwrapkey", R"({"alg":"RSA-OAEP","value":"AAAA"})", 400);
  ExpectClientError("POST", "/keys/k/unwrapkey",
                    json{{"alg", "RSA-OAEP"}, {"value", Base64UrlEncode(Bytes(256, 7))}}.dump(), 400);
  ExpectClientError("POST", "/keys/n/create", R"({"kty":"EC"})", 400);
  ExpectClientError("POST", "/keys/n/create", R"({"kty":"RSA","key_size":1024})", 400);
  ExpectClientError("POST", "/keys/n/create", R"({"kty":"RSA","key_size":"big"})", 400);
  ExpectClientError("POST", "/keys/n/create", R"({"kty":"RSA","key_size":99999999999})", 400);
  ExpectClientError("POST", "/keys/n/create", R"({"kty":"oct","key_ops":["fly"]})", 400);
  ExpectClientError("POST", "/keys/absent/wrapkey", R"({"alg":"RSA-OAEP","value":"AAAA"})", 404);
  ExpectClientError("GET", "/nothing/here", "", 404);
  ExpectClientError("DELETE", "/secrets", "", 404);
  ExpectClientError("PUT", "/keys/k", "{}", 404);
  ExpectClientError("GET", "/secrets/ok?api-version=1999-01-01", "", 400);
  // After all that, it still serves.
  auto ok = admin_->GetSecret("ok");
  ASSERT_TRUE(ok.ok()) << ok.status().message();
  EXPECT_EQ(ok->value.view(), "fine");
}

TEST_F(VaultServerTest, AuditLogRecordsCallsButNeverValues) {
  const std::string value = "TOPSECRET-4d1f9c";
  ASSERT_TRUE(admin_->SetSecret("audited", AsBytes(value), "BEK", {}).ok());
  ASSERT_TRUE(admin_->GetSecret("audited").ok());
  ASSERT_TRUE(admin_->CreateKey("kek", "oct", 256).ok());
  auto w = admin_->WrapKey("kek", "", "A256KW", AsBytes(value));
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE(admin_->UnwrapKey("kek", "", "A256KW", w->second).ok());
  std::string log = ReadFileOrDie(vault_->dir() + "/audit.log");
  EXPECT_EQ(log.find(value), std::string::npos);
  EXPECT_EQ(log.find(Base64UrlEncode(AsBytes(value))), std::string::npos);
  EXPECT_EQ(log.find(Base64UrlEncode(w->second)), std::string::npos);
  int lines = 0;
  bool saw_set = false, saw_unwrap = false;
  size_t pos = 0;
  while (pos < log.size()) {
    size_t nl = log.find('\n', pos);
    json j = json::parse(log.substr(pos, nl - pos));
    ++lines;
    EXPECT_TRUE(j.contains("time") && j.contains("op") && j.contains("status"));
    if (j["op"] == "secrets:set" && j["token"] == "admin" && j["status"] == 200) saw_set = true;
    if (j["op"] == "keys:unwrap" && j["object"].get<std::string>().rfind("keys/kek/", 0) == 0) saw_unwrap = true;
    pos = nl + 1;
  }
  EXPECT_EQ(lines, 5);
  EXPECT_TRUE(saw_set);
  EXPECT_TRUE(saw_unwrap);
}

TEST_F(VaultServerTest, PersistsAcrossRestart) {
  auto s = admin_->SetSecret("kept", AsBytes("across restarts"), "BEK", {{"a", "b"}});
  ASSERT_TRUE(s.ok());
  ASSERT_TRUE(admin_->CreateKey("kek", "RSA", 2048).ok());
  auto w = admin_->WrapKey("kek", "", "RSA-OAEP", AsBytes("wrapped before"));
  ASSERT_TRUE(w.ok());
  admin_.reset();
  EXPECT_EQ(vault_->Stop(SIGTERM), 0) << vault_->ReadLog();
  EXPECT_NE(vault_->ReadLog().find("vault: stopped"), std::string::npos);
  vault_->Start();  // same directory, a new port
  admin_ = Client(*vault_, admin_token_);
  auto got = admin_->GetSecret("kept", s->version);
  ASSERT_TRUE(got.ok()) << got.status().message();
  EXPECT_EQ(got->value.view(), "across restarts");
  EXPECT_EQ(got->tags.at("a"), "b");
  EXPECT_EQ(admin_->UnwrapKey("kek", "", "RSA-OAEP", w->second)->view(), "wrapped before");
  // A second server on the same directory is refused (it holds the lock).
  RunResult second = Diskseal({"vault", "serve", "--dir", vault_->dir(), "--listen", "127.0.0.1:0"});
  EXPECT_EQ(second.exit_code, 5) << second.err;
}

TEST_F(VaultServerTest, EveryAcknowledgedWriteSurvivesKill9) {
  struct Ack {
    std::string name, version, value;
  };
  std::mutex mu;
  std::vector<Ack> acked;
  std::atomic<bool> stop{false};
  std::vector<std::thread> writers;
  for (int t = 0; t < 4; ++t) {
    writers.emplace_back([&, t] {
      auto c = Client(*vault_, admin_token_);
      for (int i = 0; i < 100000 && !stop; ++i) {
        std::string name = "burst-" + std::to_string(t) + "-" + std::to_string(i % 7);
        std::string value = "value-" + std::to_string(t) + "-" + std::to_string(i);
        auto r = c->SetSecret(name, AsBytes(value), "", {});
        if (!r.ok()) return;  // the server died under us: everything before this was acked
        std::lock_guard lock(mu);
        acked.push_back({name, r->version, value});
      }
    });
  }
  // Kill once a good number of writes were acknowledged, while the writers keep going.
  for (;;) {
    {
      std::lock_guard lock(mu);
      if (acked.size() >= 200) break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  EXPECT_EQ(vault_->Stop(SIGKILL), 128 + SIGKILL);
  stop = true;
  for (auto& w : writers) w.join();
  vault_->Start();
  auto c = Client(*vault_, admin_token_);
  std::lock_guard lock(mu);
  ASSERT_GE(acked.size(), 200u);
  for (const auto& a : acked) {
    auto got = c->GetSecret(a.name, a.version);
    ASSERT_TRUE(got.ok()) << a.name << "/" << a.version << ": " << got.status().message();
    EXPECT_EQ(got->value.view(), a.value);
  }
}

TEST_F(VaultServerTest, BackupAndRestore) {
  ASSERT_TRUE(admin_->SetSecret("before", AsBytes("in backup"), "", {}).ok());
  std::string backup = tmp_ / "vault.bak";
  RunResult b = Diskseal({"vault", "backup", "--dir", vault_->dir(), "--out", backup});
  ASSERT_EQ(b.exit_code, 0) << b.err;
  ASSERT_TRUE(admin_->SetSecret("after", AsBytes("not in backup"), "", {}).ok());
  // The server holds the directory: restore refuses while it runs.
  RunResult busy = Diskseal({"vault", "restore", "--dir", vault_->dir(), "--from", backup});
  EXPECT_EQ(busy.exit_code, 5) << busy.err;
  admin_.reset();
  ASSERT_EQ(vault_->Stop(SIGTERM), 0);
  // A backup only restores under its own master key.
  TempDir other;
  RunResult mk = Diskseal({"vault", "restore", "--dir", vault_->dir(), "--from", backup,
                           "--master-key", other / "wrong.key"});
  EXPECT_NE(mk.exit_code, 0);
  RunResult r = Diskseal({"vault", "restore", "--dir", vault_->dir(), "--from", backup});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  vault_->Start();
  admin_ = Client(*vault_, admin_token_);
  EXPECT_EQ(admin_->GetSecret("before")->value.view(), "in backup");
  EXPECT_EQ(admin_->GetSecret("after").status().code(), Code::kNotFound);
}

TEST_F(VaultServerTest, CliSecretAndKeyCommands) {
  std::vector<std::string> conn = {"--vault", vault_->url(), "--vault-token-file", admin_token_,
                                   "--vault-ca", vault_->ca()};
  auto cmd = [&](std::vector<std::string> a) {
    a.insert(a.end(), conn.begin(), conn.end());
    return a;
  };
  RunResult set = Diskseal(cmd({"vault", "secret", "set", "cli-secret", "--content-type", "BEK", "--tag", "k=v", "--json"}),
                           "from stdin\n");
  ASSERT_EQ(set.exit_code, 0) << set.err;
  RunResult get = Diskseal(cmd({"vault", "secret", "get", "cli-secret"}));
  ASSERT_EQ(get.exit_code, 0) << get.err;
  EXPECT_EQ(get.out, "from stdin\n");
  RunResult list = Diskseal(cmd({"vault", "secret", "list", "cli-secret"}));
  EXPECT_EQ(list.out, json::parse(set.out)["version"].get<std::string>() + "\n");
  ASSERT_EQ(Diskseal(cmd({"vault", "key", "create", "cli-kek"})).exit_code, 0);
  RunResult wrap = Diskseal(cmd({"vault", "key", "wrap", "cli-kek"}), "key bytes");
  ASSERT_EQ(wrap.exit_code, 0) << wrap.err;
  RunResult unwrap = Diskseal(cmd({"vault", "key", "unwrap", "cli-kek"}), wrap.out);
  ASSERT_EQ(unwrap.exit_code, 0) << unwrap.err;
  EXPECT_EQ(unwrap.out, "key bytes");
  RunResult missing = Diskseal(cmd({"vault", "secret", "get", "nope", "--json"}));
  EXPECT_EQ(missing.exit_code, 4);
  EXPECT_NE(missing.out.find("\"not-found\""), std::string::npos) << missing.out;
}

}  // namespace
}  // namespace ds::test
