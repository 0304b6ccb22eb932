// Unit tests of the vault's parts: sealing, key operations (with RFC 3394's own test vector), the
// SQLite store, tokens and the API service called in-process (no sockets).
#include <sys/stat.h>

#include <gtest/gtest.h>

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

    ASSERT_TRUE(st.AddToken({"t1", "abc", {"secrets:get"}, 5, false}).ok());
    EXPECT_EQ(st.AddToken({"t1", "def", {}, 5, false}).code(), Code::kBusy);
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
