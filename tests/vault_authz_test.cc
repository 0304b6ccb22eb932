// The vault as a real process on loopback against hostile hosts (issue 11): a machine-scoped token
// reaches only what its machine escrowed, on every route; revocations survive a restore; tokens
// expire; a crash is audited at the next start; start-up refuses a vault it cannot vouch for.
#include <sys/stat.h>

#include <ctime>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "testlib.h"
#include "vault/client.h"
#include "vault_testutil.h"

namespace ds::test {
namespace {

using json = nlohmann::json;
using vault::VaultClient;

// `vault token create` with extra options (--machine, --expires); returns the token file.
std::string MakeToken(const VaultProcess& v, const std::string& name, const std::string& perms,
                      std::vector<std::string> extra = {}) {
  std::string file = v.dir() + "." + name + ".token";
  std::vector<std::string> args{"vault", "token", "create", "--dir", v.dir(), "--name", name,
                                "--allow", perms, "--out", file};
  args.insert(args.end(), extra.begin(), extra.end());
  RunResult r = Diskseal(args);
  if (r.exit_code != 0) throw std::runtime_error("token create: " + r.err);
  return file;
}

class VaultAuthzTest : public ::testing::Test {
 protected:
  void SetUp() override {
    vault_ = std::make_unique<VaultProcess>(tmp_ / "vault");
    vault_->Start();
    op_ = Client(*vault_, MakeToken(*vault_, "operator", "all"));
  }
  TempDir tmp_;
  std::unique_ptr<VaultProcess> vault_;
  std::unique_ptr<VaultClient> op_;
};

// Every route, host A against host B's objects: denied (403, ForbiddenByPolicy); B itself and an
// operator succeed. Host tokens hold every permission, so only the object rule can refuse.
TEST_F(VaultAuthzTest, HostTokensReachOnlyTheirOwnMachinesObjects) {
  auto a = Client(*vault_, MakeToken(*vault_, "host-a", "all", {"--machine", "hostA"}));
  auto b = Client(*vault_, MakeToken(*vault_, "host-b", "all", {"--machine", "hostB"}));
  const vault::Tags tags_b = {{"MachineName", "hostB"}, {"DiskEncryptionKeyFileName", "LinuxPassPhraseFileName"}};

  // B escrows as the escrow client does: wraps with the operators' shared KEK, stores the
  // wrapped value tagged with its machine, unwraps it back.
  ASSERT_TRUE(op_->CreateKey("shared-kek", "RSA", 2048).ok());
  auto wrapped = b->WrapKey("shared-kek", "", "RSA-OAEP", AsBytes("passphrase-of-b"));
  ASSERT_TRUE(wrapped.ok()) << wrapped.status().message();
  std::string w64 = Base64Encode(wrapped->second);
  auto sb = b->SetSecret("disk-b", AsBytes(w64), "Wrapped BEK", tags_b);
  ASSERT_TRUE(sb.ok()) << sb.status().message();
  auto back = b->UnwrapKey("shared-kek", "", "RSA-OAEP", wrapped->second);
  ASSERT_TRUE(back.ok()) << back.status().message();
  EXPECT_EQ(back->view(), "passphrase-of-b");
  // B's own key, and objects B deleted (for the deleted-area routes).
  auto kb = b->CreateKey("kek-b", "RSA", 2048);
  ASSERT_TRUE(kb.ok()) << kb.status().message();
  auto wb = b->WrapKey("kek-b", "", "RSA-OAEP", AsBytes("x"));
  ASSERT_TRUE(wb.ok());
  for (const char* n : {"gone-b1", "gone-b2"}) {
    ASSERT_TRUE(b->SetSecret(n, AsBytes("x"), "", tags_b).ok());
    ASSERT_EQ(b->Call("DELETE", std::string("/secrets/") + n, "")->status, 200);
  }
  for (const char* n : {"kgone-b1", "kgone-b2"}) {
    ASSERT_TRUE(b->CreateKey(n, "oct", 256).ok());
    ASSERT_EQ(b->Call("DELETE", std::string("/keys/") + n, "")->status, 200);
  }
  std::string unwrap_body = R"({"alg":"RSA-OAEP","value":")" + Base64UrlEncode(wrapped->second) + "\"}";
  std::string unwrap_own_body = R"({"alg":"RSA-OAEP","value":")" + Base64UrlEncode(wb->second) + "\"}";

  struct Route {
    std::string method, path, body;
  };
  const std::vector<Route> routes = {
      {"GET", "/secrets/disk-b", ""},
      {"GET", "/secrets/disk-b/" + sb->version, ""},
      {"GET", "/secrets/disk-b/versions", ""},
      {"PUT", "/secrets/disk-b", R"({"value":"bad latest","tags":{"MachineName":"hostA"}})"},
      {"PATCH", "/secrets/disk-b/" + sb->version, R"({"attributes":{"enabled":false}})"},
      {"PATCH", "/secrets/disk-b", R"({"tags":{"MachineName":"hostA"}})"},
      {"DELETE", "/secrets/disk-b", ""},
      {"GET", "/deletedsecrets/gone-b1", ""},
      {"POST", "/deletedsecrets/gone-b1/recover", ""},
      {"DELETE", "/deletedsecrets/gone-b2", ""},
      {"GET", "/keys/kek-b", ""},
      {"GET", "/keys/kek-b/versions", ""},
      {"POST", "/keys/kek-b/create", R"({"kty":"oct"})"},
      {"POST", "/keys/kek-b/rotate", ""},
      {"POST", "/keys/kek-b/wrapkey", R"({"alg":"RSA-OAEP","value":"AAEC"})"},
      {"POST", "/keys/kek-b/unwrapkey", unwrap_own_body},
      {"POST", "/keys/shared-kek/unwrapkey", unwrap_body},  // B's escrowed value, operator KEK
      {"DELETE", "/keys/kek-b", ""},
      {"GET", "/deletedkeys/kgone-b1", ""},
      {"POST", "/deletedkeys/kgone-b1/recover", ""},
      {"DELETE", "/deletedkeys/kgone-b2", ""},
      {"GET", "/secrets", ""},
      {"GET", "/deletedsecrets", ""},
      {"GET", "/keys", ""},
      {"GET", "/deletedkeys", ""},
  };
  for (const auto& r : routes) {
    SCOPED_TRACE("host A: " + r.method + " " + r.path);
    auto got = a->Call(r.method, r.path, r.body);
    ASSERT_TRUE(got.ok()) << got.status().message();
    EXPECT_EQ(got->status, 403) << got->body;
    json j = Body(*got);
    EXPECT_EQ(j["error"]["code"], "Forbidden");
    EXPECT_EQ(j["error"]["innererror"]["code"], "ForbiddenByPolicy");
    EXPECT_EQ(got->body.find("passphrase-of-b"), std::string::npos);
  }
  // Nothing A tried changed B's secret: the newest version is still the one B escrowed, enabled.
  auto still = b->GetSecret("disk-b");
  ASSERT_TRUE(still.ok()) << still.status().message();
  EXPECT_EQ(still->version, sb->version);
  EXPECT_EQ(still->value.view(), w64);
  // A may not claim B's wrapped value as its own to unwrap it.
  auto steal = a->SetSecret("disk-a", AsBytes(w64), "Wrapped BEK", {{"MachineName", "hostA"}});
  EXPECT_EQ(steal.status().code(), Code::kPermissionDenied);
  // A's own secrets must say they are A's.
  EXPECT_EQ(a->SetSecret("disk-a", AsBytes("x"), "BEK", {}).status().code(), Code::kPermissionDenied);
  EXPECT_EQ(a->SetSecret("disk-a", AsBytes("x"), "BEK", {{"MachineName", "hostB"}}).status().code(),
            Code::kPermissionDenied);
  EXPECT_TRUE(a->SetSecret("disk-a", AsBytes("x"), "BEK", {{"MachineName", "hostA"}}).ok());
  // A public-key use of the operators' KEK is open to A: wrapping and reading the public key.
  EXPECT_TRUE(a->WrapKey("shared-kek", "", "RSA-OAEP", AsBytes("y")).ok());
  EXPECT_TRUE(a->GetKey("shared-kek").ok());

  // The same routes with B's own token and with an operator's succeed.
  EXPECT_EQ(b->GetSecret("disk-b", sb->version)->value.view(), w64);
  EXPECT_EQ(b->ListSecretVersions("disk-b")->size(), 1u);
  EXPECT_EQ(b->Call("GET", "/deletedsecrets/gone-b1", "")->status, 200);
  EXPECT_EQ(b->Call("POST", "/keys/kek-b/" + kb->version + "/unwrapkey", unwrap_own_body)->status, 200);
  EXPECT_EQ(op_->GetSecret("disk-b")->value.view(), w64);
  EXPECT_EQ(op_->UnwrapKey("shared-kek", "", "RSA-OAEP", wrapped->second)->view(), "passphrase-of-b");
  EXPECT_EQ(op_->Call("GET", "/secrets", "")->status, 200);
  EXPECT_EQ(op_->Call("GET", "/deletedkeys/kgone-b1", "")->status, 200);
  EXPECT_EQ(op_->Call("POST", "/deletedsecrets/gone-b1/recover", "")->status, 200);
  EXPECT_EQ(op_->Call("POST", "/keys/kek-b/" + kb->version + "/unwrapkey", unwrap_own_body)->status, 200);
  // Host B's tokens list shows the scope.
  RunResult ls = Diskseal({"vault", "token", "list", "--dir", vault_->dir(), "--json"});
  ASSERT_EQ(ls.exit_code, 0) << ls.err;
  json tokens = json::parse(ls.out);
  bool saw_b = false;
  for (const auto& t : tokens)
    if (t["name"] == "host-b") {
      saw_b = true;
      EXPECT_EQ(t["machine"], "hostB");
    }
  EXPECT_TRUE(saw_b);
}

TEST_F(VaultAuthzTest, RevocationSurvivesRestoringAnOlderBackup) {
  std::string host_token = MakeToken(*vault_, "host1", "secrets:get,secrets:set", {"--machine", "host1"});
  auto host = Client(*vault_, host_token);
  ASSERT_TRUE(host->SetSecret("d1", AsBytes("v"), "BEK", {{"MachineName", "host1"}}).ok());
  std::string backup = tmp_ / "before-revoke.bak";
  RunResult b = Diskseal({"vault", "backup", "--dir", vault_->dir(), "--out", backup});
  ASSERT_EQ(b.exit_code, 0) << b.err;
  RunResult rv = Diskseal({"vault", "token", "revoke", "--dir", vault_->dir(), "--name", "host1"});
  ASSERT_EQ(rv.exit_code, 0) << rv.err;
  EXPECT_EQ(host->Call("GET", "/secrets/d1", "")->status, 401);
  host.reset();  // no keep-alive connection holds the stop up
  op_.reset();
  ASSERT_EQ(vault_->Stop(SIGTERM), 0);
  RunResult r = Diskseal({"vault", "restore", "--dir", vault_->dir(), "--from", backup});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("re-applied 1 token revocation"), std::string::npos) << r.out;
  vault_->Start();  // on a new port: a new client
  host = Client(*vault_, host_token);
  auto after = host->Call("GET", "/secrets/d1", "");
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->status, 401) << after->body;
  RunResult ls = Diskseal({"vault", "token", "list", "--dir", vault_->dir(), "--json"});
  ASSERT_EQ(ls.exit_code, 0);
  for (const auto& t : json::parse(ls.out))
    if (t["name"] == "host1") {
      EXPECT_TRUE(t["revoked"].get<bool>());
    }
  // The operator token, made before the backup, still works.
  op_ = Client(*vault_, vault_->dir() + ".operator.token");
  EXPECT_EQ(op_->GetSecret("d1")->value.view(), "v");
}

TEST_F(VaultAuthzTest, TokensExpireWith401AndAClearError) {
  RunResult bad = Diskseal({"vault", "token", "create", "--dir", vault_->dir(), "--name", "x",
                            "--allow", "all", "--expires", "soon"});
  EXPECT_EQ(bad.exit_code, 1) << bad.err;
  int64_t before = int64_t(std::time(nullptr));
  std::string short_lived = MakeToken(*vault_, "short", "secrets:get", {"--expires", "1s"});
  MakeToken(*vault_, "default-life", "secrets:get");
  MakeToken(*vault_, "forever", "secrets:get", {"--expires", "never"});
  RunResult ls = Diskseal({"vault", "token", "list", "--dir", vault_->dir(), "--json"});
  ASSERT_EQ(ls.exit_code, 0) << ls.err;
  for (const auto& t : json::parse(ls.out)) {
    if (t["name"] == "default-life") {
      int64_t e = t["expires"].get<int64_t>();
      EXPECT_GE(e, before + 90 * 86400);  // the stated default: 90 days
      EXPECT_LE(e, int64_t(std::time(nullptr)) + 90 * 86400);
    }
    if (t["name"] == "forever") {
      EXPECT_TRUE(t["expires"].is_null());
    }
  }
  ASSERT_TRUE(op_->SetSecret("e", AsBytes("v"), "", {}).ok());
  // Wait for the clock, not a fixed time: the token's second must have passed.
  auto c = Client(*vault_, short_lived);
  for (int i = 0; i < 400 && std::time(nullptr) <= before + 1; ++i) usleep(10000);
  ASSERT_GT(std::time(nullptr), before + 1);
  auto r = c->Call("GET", "/secrets/e", "");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 401) << r->body;
  json j = Body(*r);
  EXPECT_EQ(j["error"]["code"], "Unauthorized");
  EXPECT_EQ(j["error"]["innererror"]["code"], "TokenExpired");
  EXPECT_NE(j["error"]["message"].get<std::string>().find("token 'short' expired at"), std::string::npos);
  EXPECT_NE(r->www_authenticate.find("invalid_token"), std::string::npos);
}

TEST_F(VaultAuthzTest, ACrashIsAuditedAtTheNextStartAndACleanStopIsNot) {
  auto count = [&] {
    std::string log = ReadFileOrDie(vault_->dir() + "/audit.log");
    size_t n = 0;
    for (size_t p = 0; (p = log.find("previous run ended without a clean stop", p)) != std::string::npos; ++p) ++n;
    return n;
  };
  EXPECT_TRUE(PosixEnv()->Exists(vault_->dir() + "/serve.running"));
  op_.reset();
  ASSERT_EQ(vault_->Stop(SIGTERM), 0);
  EXPECT_FALSE(PosixEnv()->Exists(vault_->dir() + "/serve.running"));
  vault_->Start();
  EXPECT_EQ(count(), 0u);
  ASSERT_EQ(vault_->Stop(SIGKILL), 128 + SIGKILL);
  vault_->Start();
  EXPECT_EQ(count(), 1u);
  EXPECT_TRUE(PosixEnv()->Exists(vault_->dir() + "/serve.running"));
  ASSERT_EQ(vault_->Stop(SIGTERM), 0);
  vault_->Start();
  EXPECT_EQ(count(), 1u);
}

// serve refuses, without writing a new key or an empty database, a directory missing either.
TEST_F(VaultAuthzTest, ServeRefusesAMissingKeyOrDatabaseAndWritesNothing) {
  std::string dir = vault_->dir();
  op_.reset();
  ASSERT_EQ(vault_->Stop(SIGTERM), 0);
  ASSERT_EQ(::rename((dir + "/master.key").c_str(), (tmp_ / "master.key").c_str()), 0);
  EXPECT_THROW(vault_->Start(), std::runtime_error);
  EXPECT_NE(vault_->ReadLog().find("master key file is missing"), std::string::npos) << vault_->ReadLog();
  EXPECT_FALSE(PosixEnv()->Exists(dir + "/master.key"));
  ASSERT_EQ(::rename((tmp_ / "master.key").c_str(), (dir + "/master.key").c_str()), 0);
  ASSERT_EQ(::rename((dir + "/vault.db").c_str(), (tmp_ / "vault.db").c_str()), 0);
  EXPECT_THROW(vault_->Start(), std::runtime_error);
  EXPECT_NE(vault_->ReadLog().find("vault database is missing"), std::string::npos) << vault_->ReadLog();
  EXPECT_FALSE(PosixEnv()->Exists(dir + "/vault.db"));
  ASSERT_EQ(::rename((tmp_ / "vault.db").c_str(), (dir + "/vault.db").c_str()), 0);
  vault_->Start();
  // `vault backup` writes 0600 whatever the umask.
  mode_t old = ::umask(022);
  RunResult b = Diskseal({"vault", "backup", "--dir", dir, "--out", tmp_ / "b.bak"});
  ::umask(old);
  ASSERT_EQ(b.exit_code, 0) << b.err;
  struct stat st;
  ASSERT_EQ(::stat((tmp_ / "b.bak").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
}

// The shipped unit is one systemd accepts (systemd-analyze verify, with ExecStart pointed at this
// build), restarts the vault on failure and keeps the hardening it promises. (What it restarts
// into, the audited crash, is ACrashIsAuditedAtTheNextStartAndACleanStopIsNot.)
TEST(VaultSystemdUnit, VerifiesAndRestartsOnFailureHardened) {
  ASSERT_TRUE(HaveProgram("systemd-analyze")) << "needs systemd-analyze (Debian package systemd, scripts/setup)";
  std::string unit = ReadFileOrDie(std::string(DISKSEAL_SOURCE_DIR) + "/packaging/systemd/diskseal-vault.service");
  for (const char* line : {"\nRestart=on-failure\n", "\nProtectSystem=strict\n", "\nNoNewPrivileges=yes\n",
                           "\nPrivateTmp=yes\n", "\nReadWritePaths=/var/lib/diskseal-vault\n",
                           "\nUMask=0077\n", "\nLimitCORE=0\n", "vault serve --dir /var/lib/diskseal-vault",
                           "\nUser=diskseal-vault\n", "\nEnvironmentFile=-/etc/diskseal/vault.conf\n"})
    EXPECT_NE(unit.find(line), std::string::npos) << line;
  std::string exec = "ExecStart=/usr/sbin/diskseal ";
  size_t at = unit.find(exec);
  ASSERT_NE(at, std::string::npos);
  unit.replace(at, exec.size(), std::string("ExecStart=") + DISKSEAL_BIN + " ");
  TempDir tmp;
  std::string copy = tmp / "diskseal-vault.service";
  WriteFile(copy, unit);
  RunResult r = RunProgram({"systemd-analyze", "verify", copy});
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_EQ(r.err, "") << "systemd-analyze warns about the unit";
}

// The boot-time unit that resumes interrupted in-place operations (packaging/systemd/
// diskseal-resume.service): accepted by systemd, ordered after the volumes are opened and
// mounted, stopped cleanly at a commit point (exit 9 is success).
TEST(ResumeSystemdUnit, VerifiesAndIsOrderedAfterTheVolumes) {
  ASSERT_TRUE(HaveProgram("systemd-analyze")) << "needs systemd-analyze (Debian package systemd, scripts/setup)";
  std::string unit = ReadFileOrDie(std::string(DISKSEAL_SOURCE_DIR) + "/packaging/systemd/diskseal-resume.service");
  for (const char* line : {"\nExecStart=/usr/sbin/diskseal resume --all\n", "\nAfter=local-fs.target cryptsetup.target network-online.target\n",
                           "\nSuccessExitStatus=9\n", "\nKillSignal=SIGTERM\n", "\nLimitCORE=0\n", "\nWantedBy=multi-user.target\n"})
    EXPECT_NE(unit.find(line), std::string::npos) << line;
  std::string exec = "ExecStart=/usr/sbin/diskseal ";
  size_t at = unit.find(exec);
  ASSERT_NE(at, std::string::npos);
  unit.replace(at, exec.size(), std::string("ExecStart=") + DISKSEAL_BIN + " ");
  TempDir tmp;
  std::string copy = tmp / "diskseal-resume.service";
  WriteFile(copy, unit);
  // Documentation= names man:diskseal-resume(8), which the package installs (not this host).
  RunResult r = RunProgram({"systemd-analyze", "verify", "--man=no", copy});
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_EQ(r.err, "") << "systemd-analyze warns about the unit";
}

}  // namespace
}  // namespace ds::test
