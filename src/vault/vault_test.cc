// Unit tests of the vault's parts: sealing, key operations (with RFC 3394's own test vector), the
// SQLite store, tokens and the API service called in-process (no sockets).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>
#include <sqlite3.h>

#include <iterator>
#include <random>
#include <nlohmann/json.hpp>

#include "crypto/crypto.h"
#include "testlib.h"
#include "vault/service.h"
#include "vault/store.h"
#include "vault/vault_crypto.h"
#include "vault/vault_dir.h"

namespace ds::vault {
namespace {

using json = nlohmann::json;
using test::TempDir;

SecureBuffer Key32(uint8_t fill) {
  SecureBuffer k(32);
  for (size_t i = 0; i < 32; ++i) k.data()[i] = uint8_t(fill + i);
  return k;
}

TEST(MasterKey, SealBindsContextAndKey) {
  MasterKey mk(Key32(0));
  auto sealed = mk.Seal(AsBytes("s3cret"), "secrets/a/1");
  ASSERT_TRUE(sealed.ok());
  EXPECT_EQ(sealed->size(), 1u + 12 + 6 + 16);
  auto opened = mk.Open(*sealed, "secrets/a/1");
  ASSERT_TRUE(opened.ok());
  EXPECT_EQ(opened->view(), "s3cret");
  EXPECT_EQ(mk.Open(*sealed, "secrets/b/1").status().code(), Code::kCorrupt);
  EXPECT_EQ(MasterKey(Key32(1)).Open(*sealed, "secrets/a/1").status().code(), Code::kCorrupt);
  Bytes flipped = *sealed;
  flipped[15] ^= 1;
  EXPECT_EQ(mk.Open(flipped, "secrets/a/1").status().code(), Code::kCorrupt);
}

TEST(MasterKey, FileIsCreated0600AndLooseModesAreRefused) {
  TempDir d;
  auto mk = MasterKey::LoadOrCreate(*PosixEnv(), d / "mk", true);
  ASSERT_TRUE(mk.ok()) << mk.status().message();
  struct stat st;
  ASSERT_EQ(::stat((d / "mk").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  auto sealed = mk->Seal(AsBytes("x"), "c");
  auto again = MasterKey::LoadOrCreate(*PosixEnv(), d / "mk", false);
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->Open(*sealed, "c").ok());
  ::chmod((d / "mk").c_str(), 0644);
  EXPECT_EQ(MasterKey::LoadOrCreate(*PosixEnv(), d / "mk", false).status().code(),
            Code::kPermissionDenied);
  EXPECT_EQ(MasterKey::LoadOrCreate(*PosixEnv(), d / "none", false).status().code(), Code::kNotFound);
}

TEST(KeyMaterial, A256KWMatchesRfc3394Vector) {
  // RFC 3394 section 4.6: 256 bits of key data with a 256-bit KEK.
  auto kek_bytes = HexDecode("000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F");
  auto data = HexDecode("00112233445566778899AABBCCDDEEFF000102030405060708090A0B0C0D0E0F");
  auto expect = HexDecode("28C9F404C4B810F4CBCCB35CFB87F8263F5786E2D80ED326CBC7F0E71A99F43BFB988B9B7A02DD21");
  auto km = KeyMaterial::Deserialize("oct", *kek_bytes);
  ASSERT_TRUE(km.ok());
  auto wrapped = (*km)->Wrap(WrapAlg::kA256KW, *data);
  ASSERT_TRUE(wrapped.ok()) << wrapped.status().message();
  EXPECT_EQ(HexEncode(*wrapped), HexEncode(*expect));
  auto back = (*km)->Unwrap(WrapAlg::kA256KW, *wrapped);
  ASSERT_TRUE(back.ok());
  EXPECT_TRUE(back->Equals(*data));
  Bytes bad = *wrapped;
  bad[3] ^= 0x80;
  EXPECT_EQ((*km)->Unwrap(WrapAlg::kA256KW, bad).status().code(), Code::kInvalidArgument);
  EXPECT_EQ((*km)->Wrap(WrapAlg::kA256KW, AsBytes("not8x")).status().code(), Code::kInvalidArgument);
  EXPECT_EQ((*km)->Wrap(WrapAlg::kRsaOaep, *data).status().code(), Code::kInvalidArgument);
}

TEST(KeyMaterial, RsaOaepRoundTripsAndPublicWrapInteroperates) {
  auto km = KeyMaterial::GenerateRsa(2048);
  ASSERT_TRUE(km.ok());
  EXPECT_EQ((*km)->bits(), 2048);
  // Survives serialization (as stored, sealed, in the database).
  auto ser = (*km)->Serialize();
  ASSERT_TRUE(ser.ok());
  auto km2 = KeyMaterial::Deserialize("RSA", ser->span());
  ASSERT_TRUE(km2.ok());
  for (WrapAlg alg : {WrapAlg::kRsaOaep, WrapAlg::kRsaOaep256}) {
    auto w = (*km)->Wrap(alg, AsBytes("passphrase"));
    ASSERT_TRUE(w.ok());
    EXPECT_EQ(w->size(), 256u);
    auto u = (*km2)->Unwrap(alg, *w);
    ASSERT_TRUE(u.ok()) << WrapAlgName(alg);
    EXPECT_EQ(u->view(), "passphrase");
    // A client holding only n and e wraps; the vault's private key unwraps.
    auto pw = RsaPublicWrap((*km)->modulus(), (*km)->exponent(), alg, AsBytes("from-public"));
    ASSERT_TRUE(pw.ok());
    auto pu = (*km)->Unwrap(alg, *pw);
    ASSERT_TRUE(pu.ok());
    EXPECT_EQ(pu->view(), "from-public");
  }
  // Wrong padding hash: refused, not garbage.
  auto w = (*km)->Wrap(WrapAlg::kRsaOaep, AsBytes("x"));
  EXPECT_EQ((*km)->Unwrap(WrapAlg::kRsaOaep256, *w).status().code(), Code::kInvalidArgument);
  EXPECT_EQ((*km)->Wrap(WrapAlg::kRsaOaep, Bytes(215, 1)).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(KeyMaterial::GenerateRsa(1024).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(ParseWrapAlg("RSA1_5").status().code(), Code::kUnsupported);
}

ObjectVersion Secret(const std::string& name, const std::string& version) {
  ObjectVersion v;
  v.name = name;
  v.version = version;
  v.sealed = Bytes{1, 2, 3};
  v.created = v.updated = 100;
  return v;
}

TEST(SqliteStore, VersionsDeletionAndPersistence) {
  TempDir d;
  {
    auto s = OpenSqliteStore(d / "v.db");
    ASSERT_TRUE(s.ok());
    VaultStore& st = **s;
    for (int i = 0; i < 30; ++i) ASSERT_TRUE(st.AddVersion(Secret("a", "v" + std::to_string(i))).ok());
    ASSERT_TRUE(st.AddVersion(Secret("b", "x")).ok());
    EXPECT_EQ(st.AddVersion(Secret("a", "v3")).code(), Code::kBusy);  // versions are unique
    auto latest = st.Get(Kind::kSecret, "a", "", false);
    ASSERT_TRUE(latest.ok());
    EXPECT_EQ(latest->version, "v29");
    auto page = st.ListVersions(Kind::kSecret, "a", 25, 25);
    ASSERT_TRUE(page.ok());
    ASSERT_EQ(page->size(), 5u);
    EXPECT_EQ((*page)[0].version, "v4");
    auto names = st.ListNames(Kind::kSecret, 0, 10);
    ASSERT_EQ(names->size(), 2u);
    EXPECT_EQ((*names)[0].version, "v29");
    EXPECT_EQ(st.Get(Kind::kKey, "a", "", false).status().code(), Code::kNotFound);

    ASSERT_TRUE(st.SoftDelete(Kind::kSecret, "a", 1000, 50).ok());
    EXPECT_EQ(st.Get(Kind::kSecret, "a", "", false).status().code(), Code::kNotFound);
    EXPECT_TRUE(st.Get(Kind::kSecret, "a", "", true).ok());
    EXPECT_EQ(st.AddVersion(Secret("a", "new")).code(), Code::kBusy);
    auto del = st.GetDeleted(Kind::kSecret, "a");
    ASSERT_TRUE(del.ok());
    EXPECT_EQ(del->scheduled_purge_date, 1050);
    ASSERT_TRUE(st.Recover(Kind::kSecret, "a").ok());
    EXPECT_TRUE(st.Get(Kind::kSecret, "a", "v7", false).ok());
    ASSERT_TRUE(st.SoftDelete(Kind::kSecret, "b", 1000, 50).ok());
    ASSERT_TRUE(st.Purge(Kind::kSecret, "b").ok());
    EXPECT_EQ(st.Get(Kind::kSecret, "b", "", true).status().code(), Code::kNotFound);
    EXPECT_EQ(st.Recover(Kind::kSecret, "b").code(), Code::kNotFound);

    ASSERT_TRUE(st.AddToken({"t1", "abc", {"secrets:get"}, 5, false, "", 0}).ok());
    EXPECT_EQ(st.AddToken({"t1", "def", {}, 5, false, "", 0}).code(), Code::kBusy);
  }
  auto s = OpenSqliteStore(d / "v.db");
  ASSERT_TRUE(s.ok());
  EXPECT_EQ((*s)->ListVersions(Kind::kSecret, "a", 0, 100)->size(), 30u);
  auto t = (*s)->FindTokenByHash("abc");
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->perms, std::vector<std::string>{"secrets:get"});
  ASSERT_TRUE((*s)->RevokeToken("t1").ok());
  EXPECT_TRUE((*s)->FindTokenByHash("abc")->revoked);
  EXPECT_EQ((*s)->RevokeToken("nobody").code(), Code::kNotFound);
}

TEST(VaultDir, WrongMasterKeyIsRefused) {
  TempDir d;
  VaultPaths p(d / "v");
  ASSERT_TRUE(OpenVault(*PosixEnv(), p, true).ok());
  ASSERT_TRUE(OpenVault(*PosixEnv(), p, false).ok());
  VaultPaths other(d / "v", d / "other.key");
  ASSERT_TRUE(MasterKey::LoadOrCreate(*PosixEnv(), other.master_key_file, true).ok());
  EXPECT_EQ(OpenVault(*PosixEnv(), other, false).status().code(), Code::kPermissionDenied);
}

TEST(Tokens, PermissionsParseAndHash) {
  EXPECT_EQ(ParsePermissions("all")->size(), AllPermissions().size());
  auto p = ParsePermissions("secrets:get,keys:wrap,secrets:get");
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(*p, (std::vector<std::string>{"secrets:get", "keys:wrap"}));
  EXPECT_EQ(ParsePermissions("secrets:steal").status().code(), Code::kInvalidArgument);
  EXPECT_EQ(ParsePermissions(",").status().code(), Code::kInvalidArgument);
  EXPECT_EQ(HashToken("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

// The service in-process: enough to check shapes and rules without TLS (the process tests in
// tests/vault_server_test.cc cover the same API over HTTPS).
class ServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto v = OpenVault(*PosixEnv(), VaultPaths(dir_ / "v"), true);
    ASSERT_TRUE(v.ok());
    auto tok = CreateToken(*v->store, "admin", AllPermissions());
    ASSERT_TRUE(tok.ok());
    token_ = *tok;
    auto audit = AuditLog::Open(dir_ / "audit.log");
    ASSERT_TRUE(audit.ok());
    svc_ = std::make_unique<VaultService>(std::move(v->store), std::move(v->master), std::move(*audit));
  }
  ApiResponse Do(const std::string& method, const std::string& path, const std::string& body = "",
                 const std::string& api = "7.4") {
    ApiRequest r;
    r.method = method;
    r.path = path;
    if (!api.empty()) r.query.emplace("api-version", api);
    r.authorization = "Bearer " + token_;
    r.host = "vault.test";
    r.body = body;
    return svc_->Handle(r);
  }
  TempDir dir_;
  std::string token_;
  std::unique_ptr<VaultService> svc_;
};

TEST_F(ServiceTest, SecretBundleShapeAndAdeQuirks) {
  // ADE sends "enabled" as a string; the vault takes it.
  auto r = Do("PUT", "/secrets/disk1", R"({"value":"pw","contentType":"BEK","tags":{"MachineName":"m"},"attributes":{"enabled":"true"}})");
  ASSERT_EQ(r.status, 200) << r.body;
  json j = json::parse(r.body);
  EXPECT_EQ(j["value"], "pw");
  EXPECT_EQ(j["contentType"], "BEK");
  EXPECT_EQ(j["tags"]["MachineName"], "m");
  EXPECT_EQ(j["attributes"]["enabled"], true);
  EXPECT_EQ(j["attributes"]["recoveryLevel"], "Recoverable+Purgeable");
  std::string id = j["id"];
  EXPECT_EQ(id.rfind("https://vault.test/secrets/disk1/", 0), 0u);
  std::string version = id.substr(id.rfind('/') + 1);
  EXPECT_EQ(version.size(), 32u);
  auto g = Do("GET", "/secrets/disk1/" + version, "", "2015-06-01");
  ASSERT_EQ(g.status, 200);
  EXPECT_EQ(json::parse(g.body)["value"], "pw");
  EXPECT_EQ(Do("GET", "/secrets/disk1", "", "").status, 400);
  EXPECT_EQ(Do("GET", "/secrets/disk1", "", "6.0").status, 400);
  EXPECT_EQ(Do("PATCH", "/secrets/disk1/" + version, R"({"attributes":{"enabled":false}})").status, 200);
  auto disabled = Do("GET", "/secrets/disk1");
  EXPECT_EQ(disabled.status, 403);
  EXPECT_EQ(json::parse(disabled.body)["error"]["code"], "Forbidden");
  std::string log = test::ReadFileOrDie(dir_ / "audit.log");
  EXPECT_EQ(log.find("\"pw\""), std::string::npos);
  EXPECT_NE(log.find("secrets/disk1/" + version), std::string::npos);
}

TEST_F(ServiceTest, CachedReadsNeverOutliveAWrite) {
  auto value = [&](const ApiResponse& r) { return json::parse(r.body)["value"].get<std::string>(); };
  ASSERT_EQ(Do("PUT", "/secrets/c", R"({"value":"one"})").status, 200);
  EXPECT_EQ(value(Do("GET", "/secrets/c")), "one");  // now cached
  ASSERT_EQ(Do("PUT", "/secrets/c", R"({"value":"two"})").status, 200);
  EXPECT_EQ(value(Do("GET", "/secrets/c")), "two");
  ASSERT_EQ(Do("PATCH", "/secrets/c", R"({"attributes":{"enabled":false}})").status, 200);
  EXPECT_EQ(Do("GET", "/secrets/c").status, 403);
  ASSERT_EQ(Do("DELETE", "/secrets/c").status, 200);
  EXPECT_EQ(Do("GET", "/secrets/c").status, 404);
  ASSERT_EQ(Do("POST", "/deletedsecrets/c/recover").status, 200);
  EXPECT_EQ(Do("GET", "/secrets/c").status, 403);  // still the disabled newest version
  ASSERT_EQ(Do("POST", "/keys/k/create", R"({"kty":"oct"})").status, 200);
  std::string kid1 = json::parse(Do("GET", "/keys/k").body)["key"]["kid"];
  ASSERT_EQ(Do("POST", "/keys/k/rotate").status, 200);
  std::string kid2 = json::parse(Do("GET", "/keys/k").body)["key"]["kid"];
  EXPECT_NE(kid1, kid2);
  auto w = Do("POST", "/keys/k/wrapkey", R"({"alg":"A256KW","value":"AAAAAAAAAAAAAAAAAAAAAA"})");
  EXPECT_EQ(json::parse(w.body)["kid"], kid2);
}

TEST_F(ServiceTest, MissingOrUnknownTokenGetsChallenge) {
  ApiRequest r;
  r.method = "GET";
  r.path = "/secrets/x";
  r.query.emplace("api-version", "7.4");
  r.host = "h:1";
  auto a = svc_->Handle(r);
  EXPECT_EQ(a.status, 401);
  EXPECT_EQ(a.www_authenticate.rfind("Bearer authorization=", 0), 0u);
  EXPECT_NE(a.www_authenticate.find("resource=\"https://h:1\""), std::string::npos);
  r.authorization = "Bearer dsv1.forged";
  EXPECT_EQ(svc_->Handle(r).status, 401);
}

// The Host header goes into object ids: only a host name, an IP address or [IPv6], each with an
// optional port, is taken; anything else gets 400 and is not echoed.
TEST_F(ServiceTest, HostHeaderIsValidatedBeforeItBecomesAnObjectId) {
  ApiRequest r;
  r.method = "PUT";
  r.path = "/secrets/h";
  r.query.emplace("api-version", "7.4");
  r.authorization = "Bearer " + token_;
  r.body = R"({"value":"v"})";
  for (const char* good : {"vault.example", "vault.example:8443", "127.0.0.1:1", "[::1]:8443", "[::1]"}) {
    r.host = good;
    auto a = svc_->Handle(r);
    ASSERT_EQ(a.status, 200) << good << ": " << a.body;
    EXPECT_EQ(json::parse(a.body)["id"].get<std::string>().rfind(std::string("https://") + good + "/secrets/h/", 0), 0u);
  }
  for (const char* bad : {"evil.example/x?", "a b", "h:\"1", "user@host", "h:99999999", "[zz]", ".x", "h:"}) {
    r.host = bad;
    auto a = svc_->Handle(r);
    EXPECT_EQ(a.status, 400) << bad;
    EXPECT_EQ(a.body.find(bad), std::string::npos) << a.body;
    EXPECT_EQ(json::parse(a.body)["error"]["code"], "BadParameter");
  }
}

// Azure Key Vault's api-versions are taken (the current SDKs send 2026-04-01 and 2025-07-01); an
// unknown one is answered as Azure answers it.
TEST_F(ServiceTest, ApiVersionsAsAzureAcceptsThem) {
  ASSERT_EQ(Do("PUT", "/secrets/av", R"({"value":"v"})").status, 200);
  for (const char* v : {"2026-04-01", "2025-07-01", "7.6", "7.5", "7.4", "7.3", "7.2", "7.1", "7.0", "2016-10-01",
                        "2015-06-01", "7.6-preview.2", "7.5-preview.1", "7.2-preview"}) {
    auto a = Do("GET", "/secrets/av", "", v);
    EXPECT_EQ(a.status, 200) << v << ": " << a.body;
  }
  EXPECT_EQ(json::parse(Do("GET", "/secrets/av", "", "2025-07-01").body)["attributes"]["recoverableDays"], 90);
  for (const char* v : {"7.9", "2025-07-02", "2026-04-02", "7.4-previewx", "8.0", "latest"}) {
    auto a = Do("GET", "/secrets/av", "", v);
    ASSERT_EQ(a.status, 400) << v;
    json e = json::parse(a.body)["error"];
    EXPECT_EQ(e["code"], "BadParameter");
    EXPECT_EQ(e["message"], std::string("The specified version (") + v +
                                ") is not recognized. Consider using the latest supported version (2026-04-01).");
  }
}

TEST_F(ServiceTest, PatchContentTypeIsLimitedAsSetIs) {
  ASSERT_EQ(Do("PUT", "/secrets/ct", R"({"value":"v"})").status, 200);
  EXPECT_EQ(Do("PATCH", "/secrets/ct", json{{"contentType", std::string(255, 'c')}}.dump()).status, 200);
  auto a = Do("PATCH", "/secrets/ct", json{{"contentType", std::string(256, 'c')}}.dump());
  EXPECT_EQ(a.status, 400);
  EXPECT_NE(a.body.find("255"), std::string::npos);
  EXPECT_EQ(Do("PUT", "/secrets/ct", json{{"value", "v"}, {"contentType", std::string(256, 'c')}}.dump()).status, 400);
}

// Decided: a request whose audit line cannot be written fails with 503 (the server keeps
// running, so it serves again once the disk has room); no value leaves unaudited.
TEST(ServiceAudit, AFailedAuditWriteFailsTheRequest) {
  TempDir d;
  auto v = OpenVault(*PosixEnv(), VaultPaths(d / "v"), true);
  ASSERT_TRUE(v.ok());
  auto tok = CreateToken(*v->store, "admin", AllPermissions());
  ASSERT_TRUE(tok.ok());
  auto audit = AuditLog::Open("/dev/full");  // every write: ENOSPC
  ASSERT_TRUE(audit.ok());
  VaultService svc(std::move(v->store), std::move(v->master), std::move(*audit));
  ApiRequest r;
  r.method = "PUT";
  r.path = "/secrets/a";
  r.query.emplace("api-version", "7.4");
  r.authorization = "Bearer " + *tok;
  r.host = "h";
  r.body = R"({"value":"top-secret"})";
  auto a = svc.Handle(r);
  EXPECT_EQ(a.status, 503);
  EXPECT_EQ(a.body.find("top-secret"), std::string::npos);
  EXPECT_NE(a.body.find("audit log"), std::string::npos) << a.body;
  r.method = "GET";
  r.body.clear();
  auto g = svc.Handle(r);
  EXPECT_EQ(g.status, 503);
  EXPECT_EQ(g.body.find("top-secret"), std::string::npos);
}

// Tokens scoped to a machine, in-process: ownership is recorded at creation and never taken from
// later tags.
TEST(ServiceAuthz, OwnerIsRecordedAtCreationNotTakenFromTags) {
  TempDir d;
  auto v = OpenVault(*PosixEnv(), VaultPaths(d / "v"), true);
  ASSERT_TRUE(v.ok());
  auto op = CreateToken(*v->store, "op", AllPermissions());
  auto a = CreateToken(*v->store, "a", AllPermissions(), {"hostA", 0});
  auto b = CreateToken(*v->store, "b", AllPermissions(), {"hostB", 3600});
  ASSERT_TRUE(op.ok() && a.ok() && b.ok());
  VaultService svc(std::move(v->store), std::move(v->master), nullptr);
  auto call = [&](const std::string& tok, const std::string& method, const std::string& path,
                  const std::string& body = "") {
    ApiRequest r;
    r.method = method;
    r.path = path;
    r.query.emplace("api-version", "7.4");
    r.authorization = "Bearer " + tok;
    r.host = "h";
    r.body = body;
    return svc.Handle(r);
  };
  ASSERT_EQ(call(*a, "PUT", "/secrets/sa", R"({"value":"a1","tags":{"MachineName":"hostA"}})").status, 200);
  // B relabelling itself as A in the tag does not make A's secret B's, nor B's token A's.
  EXPECT_EQ(call(*b, "PUT", "/secrets/sa", R"({"value":"b1","tags":{"MachineName":"hostA"}})").status, 403);
  EXPECT_EQ(call(*b, "PUT", "/secrets/sa", R"({"value":"b1","tags":{"MachineName":"hostB"}})").status, 403);
  // A may not relabel its secret to B either, and an operator relabelling it does not move it.
  EXPECT_EQ(call(*a, "PATCH", "/secrets/sa", R"({"tags":{"MachineName":"hostB"}})").status, 403);
  ASSERT_EQ(call(*op, "PATCH", "/secrets/sa", R"({"tags":{"MachineName":"hostB"}})").status, 200);
  EXPECT_EQ(call(*b, "GET", "/secrets/sa").status, 403);
  EXPECT_EQ(call(*a, "GET", "/secrets/sa").status, 200);
  // Operator-made objects are the operators'.
  ASSERT_EQ(call(*op, "PUT", "/secrets/so", R"({"value":"o"})").status, 200);
  EXPECT_EQ(call(*a, "GET", "/secrets/so").status, 403);
  EXPECT_EQ(call(*a, "PUT", "/secrets/so", R"({"value":"x","tags":{"MachineName":"hostA"}})").status, 403);
  // An absent name is 404 for reads, and a scoped token creates it as its own.
  EXPECT_EQ(call(*a, "GET", "/secrets/none").status, 404);
  // A purged name is free again.
  ASSERT_EQ(call(*a, "DELETE", "/secrets/sa").status, 200);
  EXPECT_EQ(call(*b, "DELETE", "/deletedsecrets/sa").status, 403);
  ASSERT_EQ(call(*a, "DELETE", "/deletedsecrets/sa").status, 204);
  EXPECT_EQ(call(*b, "PUT", "/secrets/sa", R"({"value":"b2","tags":{"MachineName":"hostB"}})").status, 200);
  EXPECT_EQ(call(*a, "GET", "/secrets/sa").status, 403);
}

// A database made before tokens had a machine and an expiry opens, and its tokens are what they
// were: operator tokens that never expire.
TEST(SqliteStore, OlderTokenTableIsMigrated) {
  TempDir d;
  std::string path = d / "old.db";
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db,
                         "CREATE TABLE tokens(name TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE, "
                         "perms TEXT NOT NULL, created INTEGER NOT NULL, revoked INTEGER NOT NULL);"
                         "INSERT INTO tokens VALUES('old', 'h1', '[\"secrets:get\"]', 7, 0);",
                         nullptr, nullptr, nullptr),
            SQLITE_OK);
  sqlite3_close(db);
  auto s = OpenSqliteStore(path);
  ASSERT_TRUE(s.ok()) << s.status().message();
  auto t = (*s)->FindTokenByHash("h1");
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->name, "old");
  EXPECT_EQ(t->machine, "");
  EXPECT_EQ(t->expires, 0);
  ASSERT_TRUE((*s)->AddToken({"new", "h2", {"all"}, 8, false, "m1", 100}).ok());
  EXPECT_EQ((*s)->FindTokenByHash("h2")->machine, "m1");
  EXPECT_EQ((*s)->FindTokenByHash("h2")->expires, 100);
}

TEST(VaultDir, LifetimesParse) {
  EXPECT_EQ(*ParseLifetime("90d"), 90 * 86400);
  EXPECT_EQ(*ParseLifetime("12h"), 12 * 3600);
  EXPECT_EQ(*ParseLifetime("30m"), 1800);
  EXPECT_EQ(*ParseLifetime("3600s"), 3600);
  EXPECT_EQ(*ParseLifetime("7"), 7);
  EXPECT_EQ(*ParseLifetime("never"), 0);
  for (const char* bad : {"", "0d", "-1d", "1w", "d", "99999999999d", "1.5d"})
    EXPECT_EQ(ParseLifetime(bad).status().code(), Code::kInvalidArgument) << bad;
}

// Start-up refusals: each leaves the directory as it found it.
TEST(VaultDir, MissingMasterKeyIsRefusedAndNoneIsMade) {
  TempDir d;
  VaultPaths p(d / "v");
  ASSERT_TRUE(OpenVault(*PosixEnv(), p, true).ok());
  ASSERT_EQ(::rename(p.master_key_file.c_str(), (d / "kept.key").c_str()), 0);
  auto r = OpenVault(*PosixEnv(), p, true);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("master key file is missing"), std::string::npos) << r.status().message();
  EXPECT_FALSE(PosixEnv()->Exists(p.master_key_file));
  ASSERT_EQ(::rename((d / "kept.key").c_str(), p.master_key_file.c_str()), 0);
  EXPECT_TRUE(OpenVault(*PosixEnv(), p, true).ok());
}

TEST(VaultDir, MissingDatabaseInAnInitialisedDirectoryIsRefused) {
  TempDir d;
  VaultPaths p(d / "v");
  ASSERT_TRUE(OpenVault(*PosixEnv(), p, true).ok());
  ASSERT_EQ(::rename(p.db().c_str(), (d / "kept.db").c_str()), 0);
  ::unlink((p.db() + "-wal").c_str());
  ::unlink((p.db() + "-shm").c_str());
  auto r = OpenVault(*PosixEnv(), p, true);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kNotFound);
  EXPECT_NE(r.status().message().find("vault restore"), std::string::npos) << r.status().message();
  EXPECT_FALSE(PosixEnv()->Exists(p.db()));
  // A directory that never held a vault, with a key provisioned beforehand elsewhere, starts.
  VaultPaths fresh(d / "fresh", d / "provisioned.key");
  ASSERT_TRUE(MasterKey::LoadOrCreate(*PosixEnv(), fresh.master_key_file, true).ok());
  EXPECT_TRUE(OpenVault(*PosixEnv(), fresh, true).ok());
}

TEST(VaultDir, DamagedDatabaseFailsTheIntegrityCheck) {
  TempDir d;
  VaultPaths p(d / "v");
  {
    auto v = OpenVault(*PosixEnv(), p, true);
    ASSERT_TRUE(v.ok());
    for (int i = 0; i < 200; ++i) {
      ObjectVersion o;
      o.name = "s" + std::to_string(i);
      o.version = "v";
      o.sealed = Bytes(1000, uint8_t(i));
      ASSERT_TRUE(v->store->AddVersion(o).ok());
    }
  }  // closed: the WAL is checkpointed into vault.db
  ASSERT_FALSE(PosixEnv()->Exists(p.db() + "-wal"));
  struct stat st;
  ASSERT_EQ(::stat(p.db().c_str(), &st), 0);
  ASSERT_GT(st.st_size, 40 * 4096);
  {
    int fd = ::open(p.db().c_str(), O_WRONLY);
    ASSERT_GE(fd, 0);
    std::string junk(4096, '\xa5');
    ASSERT_EQ(::pwrite(fd, junk.data(), junk.size(), 20 * 4096), ssize_t(junk.size()));  // page 21
    ::close(fd);
  }
  auto r = OpenVault(*PosixEnv(), p, true);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kCorrupt) << r.status().message();
  EXPECT_NE(r.status().message().find("integrity check"), std::string::npos) << r.status().message();
}

TEST(VaultDir, BackupIsOwnerOnlyWhateverTheUmask) {
  TempDir d;
  auto v = OpenVault(*PosixEnv(), VaultPaths(d / "v"), true);
  ASSERT_TRUE(v.ok());
  mode_t old = ::umask(022);
  Status s = v->store->Backup(d / "b.bak");
  ::umask(old);
  ASSERT_TRUE(s.ok()) << s.message();
  struct stat st;
  ASSERT_EQ(::stat((d / "b.bak").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
}

// Structure-aware fuzzing of every route's body and path parsing: valid bodies mutated (bytes
// flipped, cut, extreme values spliced in) must each get a well-formed answer -- 2xx, or a 4xx with
// Azure's error body -- never a crash or a 5xx; and the vault keeps working afterwards.
TEST_F(ServiceTest, FuzzedRequestsGetWellFormedAnswers) {
  ASSERT_EQ(Do("PUT", "/secrets/s", R"({"value":"v"})").status, 200);
  ASSERT_EQ(Do("POST", "/keys/oct/create", R"({"kty":"oct"})").status, 200);
  ASSERT_EQ(Do("POST", "/keys/rsa/create", R"({"kty":"RSA","key_size":2048})").status, 200);
  struct Seed { const char* method; const char* path; const char* body; };
  const Seed seeds[] = {
      {"PUT", "/secrets/s", R"({"value":"pw","contentType":"BEK","tags":{"MachineName":"m"},"attributes":{"enabled":true,"exp":1900000000}})"},
      {"PATCH", "/secrets/s", R"({"contentType":"Wrapped BEK","attributes":{"enabled":true},"tags":{"a":"b"}})"},
      {"POST", "/keys/oct/wrapkey", R"({"alg":"A256KW","value":"AAAAAAAAAAAAAAAAAAAAAA"})"},
      {"POST", "/keys/oct/unwrapkey", R"({"alg":"A256KW","value":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"})"},
      {"POST", "/keys/rsa/wrapkey", R"({"alg":"RSA-OAEP-256","value":"c2VjcmV0"})"},
      {"POST", "/keys/new/create", R"({"kty":"RSA","key_size":1024,"attributes":{"enabled":true}})"},  // size refused: no slow keygen
      {"GET", "/secrets/s/versions", ""},
      {"DELETE", "/secrets/s", ""},
  };
  std::mt19937_64 rng(20261201);
  int ok = 0;
  for (int iter = 0; iter < 1500; ++iter) {
    const Seed& seed = seeds[rng() % std::size(seeds)];
    std::string body = seed.body, path = seed.path;
    std::string& target = (body.empty() || rng() % 4 == 0) ? path : body;
    for (int e = 0, n = 1 + int(rng() % 3); e < n && !target.empty(); ++e) {
      size_t pos = rng() % target.size();
      switch (rng() % 5) {
        case 0: target[pos] = char(rng() % 256); break;
        case 1: target.erase(pos, 1 + rng() % 6); break;
        case 2: target.insert(pos, 1, "{}[]\",:0-e.%/?="[rng() % 15]); break;
        case 3: {
          static const char* vals[] = {"-1", "4294967296", "1e308", "null", "[]", "{}", "\"\\u0000\"", "%00"};
          target.insert(pos, vals[rng() % std::size(vals)]);
          break;
        }
        default: target.resize(pos); break;
      }
    }
    if (path.empty() || path[0] != '/') path = "/" + path;
    ApiResponse r = Do(seed.method, path, body);
    ASSERT_TRUE((r.status >= 200 && r.status < 300) || (r.status >= 400 && r.status < 500))
        << r.status << " for " << seed.method << " " << path << " " << body;
    if (r.status >= 400) {
      json j = json::parse(r.body, nullptr, false);
      ASSERT_TRUE(j.is_object() && j.contains("error") && j["error"].contains("code")) << r.body;
    } else {
      ++ok;
    }
  }
  EXPECT_LT(ok, 1500);  // most mutations are refused ...
  ASSERT_EQ(Do("PUT", "/secrets/after", R"({"value":"still here"})").status, 200);  // ... and the vault
  auto g = Do("GET", "/secrets/after");                                             // still works
  ASSERT_EQ(g.status, 200) << g.body;
  EXPECT_EQ(json::parse(g.body)["value"], "still here");
}

}  // namespace
}  // namespace ds::vault
