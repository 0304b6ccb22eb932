// Encrypt in place with the key escrowed in the embedded vault (a real server process on
// loopback): the passphrase is made by diskseal, escrowed, read back and checked against the
// header before the first data block is written; resume/decrypt fetch it from the vault.
#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <optional>

#include <nlohmann/json.hpp>

#include "luks2/volume.h"
#include "testlib.h"
#include "engine/volume_escrow.h"
#include "vault_testutil.h"

namespace ds::test {
namespace {

TEST(EngineVaultTest, EncryptEscrowsFirstAndDecryptFetchesFromTheVault) {
  TempDir dir;
  VaultProcess vp(dir / "vault");
  vp.Start();
  const std::string tok = vp.Token("machine", "secrets:get,secrets:set,keys:wrap,keys:unwrap,keys:create,keys:get");
  const std::string img = dir / "disk.img", hdr = dir / "disk.hdr";
  Bytes plain = MakeRandomImage(img, 24u << 20, 31);
  const std::vector<std::string> vault = {"--vault", vp.url(), "--vault-token-file", tok, "--vault-ca", vp.ca()};
  const std::vector<std::string> fast = {"--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"};

  // a KEK, and the escrowed passphrase wrapped with it
  RunResult k = Diskseal({"vault", "key", "create", "--vault", vp.url(), "--vault-token-file", tok, "--vault-ca",
                          vp.ca(), "kek", "--kty", "RSA", "--size", "2048"});
  ASSERT_EQ(k.exit_code, 0) << k.err;
  const bool have_kek = true;
  std::vector<std::string> enc = {"encrypt", img, "--header", hdr};
  enc.insert(enc.end(), vault.begin(), vault.end());
  enc.insert(enc.end(), fast.begin(), fast.end());
  if (have_kek) enc.insert(enc.end(), {"--kek", "kek"});
  RunResult r = Diskseal(enc);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("escrowed and verified"), std::string::npos) << r.err;
  EXPECT_NE(ReadFileOrDie(img), std::string(plain.begin(), plain.end()));

  // open fetches (and unwraps) the escrowed passphrase: the view reads the original bytes.
  const std::string run = dir / "run";
  std::vector<std::string> open = {"open", "--userspace", "--run-dir", run, img, "v", "--header", hdr};
  open.insert(open.end(), vault.begin(), vault.end());
  RunResult o = Diskseal(open);
  ASSERT_EQ(o.exit_code, 0) << o.err;
  EXPECT_EQ(ReadFileOrDie(run + "/v"), std::string(plain.begin(), plain.end()));
  ASSERT_EQ(Diskseal({"close", "--run-dir", run, "v"}).exit_code, 0);
  // a token that may not read secrets cannot open it (2: permission denied)
  const std::string blind = vp.Token("blind", "keys:unwrap");
  RunResult no = Diskseal({"open", "--userspace", "--run-dir", run, img, "v", "--header", hdr, "--vault", vp.url(),
                           "--vault-token-file", blind, "--vault-ca", vp.ca()});
  EXPECT_EQ(no.exit_code, 2) << no.err;

  std::vector<std::string> dec = {"decrypt", img, "--header", hdr};
  dec.insert(dec.end(), vault.begin(), vault.end());
  RunResult d = Diskseal(dec);
  ASSERT_EQ(d.exit_code, 0) << d.err;
  EXPECT_EQ(ReadFileOrDie(img), std::string(plain.begin(), plain.end()));
}

TEST(EngineVaultTest, NoEscrowNoEncryption) {
  TempDir dir;
  VaultProcess vp(dir / "vault");
  vp.Start();
  // a token that may read but not store secrets: escrow must fail before any data is touched
  const std::string tok = vp.Token("readonly", "secrets:get");
  const std::string img = dir / "disk.img", hdr = dir / "disk.hdr";
  MakeRandomImage(img, 20u << 20, 32);
  const std::string before = Sha256File(img);
  RunResult r = Diskseal({"encrypt", img, "--header", hdr, "--vault", vp.url(), "--vault-token-file", tok,
                          "--vault-ca", vp.ca(), "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("nothing was written"), std::string::npos) << r.err;
  EXPECT_EQ(Sha256File(img), before);
  EXPECT_FALSE(std::ifstream(hdr).good());  // no header file: the next run starts afresh
  vp.Stop();
  // vault down: same
  RunResult down = Diskseal({"encrypt", img, "--header", hdr, "--vault", vp.url(), "--vault-token-file", tok,
                             "--vault-ca", vp.ca(), "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"});
  EXPECT_EQ(down.exit_code, 8) << down.err;
  EXPECT_EQ(Sha256File(img), before);
}


// The diskseal-escrow token of a detached header, read as any LUKS2 reader would.
std::optional<engine::EscrowPin> PinOf(const std::string& img, const std::string& hdr, std::string* uuid = nullptr) {
  auto v = luks2::Volume::Load(*PosixEnv(), img, hdr, false);
  if (!v.ok()) return std::nullopt;
  if (uuid) *uuid = v->metadata().uuid;
  auto pin = engine::ReadEscrowPin(v->metadata());
  return pin.ok() ? *pin : std::nullopt;
}

// An ext4 image with a few files (mke2fs -d), and debugfs to read a file back from any image or
// view of it without mounting.
std::string MakeExt4WithFiles(const std::string& dir, const std::string& img, std::map<std::string, std::string>& files) {
  const std::string src = dir + "/files";
  RunProgram({"mkdir", "-p", src});
  files = {{"a.txt", "alpha\n"}, {"b.bin", std::string(200000, 'b') + "end"}, {"c.txt", "gamma gamma\n"}};
  for (const auto& [n, c] : files) WriteFile(src + "/" + n, c);
  RunResult t = RunProgram({"truncate", "-s", "24M", img});
  if (t.exit_code != 0) return t.err;
  RunResult m = RunProgram({"mkfs.ext4", "-q", "-F", "-d", src, img});
  return m.exit_code == 0 ? "" : m.err;
}

std::string DebugfsCat(const std::string& image, const std::string& file) {
  return RunProgram({"debugfs", "-R", "cat /" + file, image}).out;
}

// Issue 10/11: the vault alone gives a volume back. encrypt --vault escrows the passphrase and
// what rebuilds the header (before the first data block, then the final header when done), the
// versions pinned in a token; the local header is deleted; `recover` rebuilds it from the vault;
// `open` through it reads the files back. cryptsetup reads the rebuilt header too.
TEST(EngineVaultTest, RecoverTheHeaderFromTheVaultAloneThenOpenReadsTheFiles) {
  TempDir dir;
  VaultProcess vp(dir / "vault");
  vp.Start();
  const std::string tok = vp.Token("machine", "secrets:get,secrets:set,keys:wrap,keys:unwrap,keys:create");
  const std::string img = dir / "disk.img", hdr = dir / "disk.hdr", rebuilt = dir / "rebuilt.hdr";
  std::map<std::string, std::string> files;
  ASSERT_EQ(MakeExt4WithFiles(dir.path(), img, files), "");
  const std::vector<std::string> vault = {"--vault", vp.url(), "--vault-token-file", tok, "--vault-ca", vp.ca()};
  const std::vector<std::string> fast = {"--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"};
  ASSERT_EQ(Diskseal({"vault", "key", "create", "--vault", vp.url(), "--vault-token-file", tok, "--vault-ca", vp.ca(),
                      "kek", "--kty", "RSA", "--size", "2048"}).exit_code, 0);
  std::vector<std::string> enc = {"encrypt", img, "--header", hdr, "--kek", "kek", "--hotzone-size", "1M"};
  enc.insert(enc.end(), vault.begin(), vault.end());
  enc.insert(enc.end(), fast.begin(), fast.end());
  RunResult r = Diskseal(enc);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("passphrase and header escrowed and verified"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("final header escrowed and verified"), std::string::npos) << r.err;
  EXPECT_EQ(DebugfsCat(img, "a.txt"), "");  // ciphertext now

  std::string uuid;
  auto pin = PinOf(img, hdr, &uuid);
  ASSERT_TRUE(pin.has_value());
  EXPECT_EQ(pin->header_state, "final");
  EXPECT_NE(pin->passphrase_secret.find("/secrets/diskseal-" + uuid + "/"), std::string::npos) << pin->passphrase_secret;
  EXPECT_NE(pin->header_secret.find("/secrets/diskseal-" + uuid + "-header/"), std::string::npos) << pin->header_secret;
  // The header secret is wrapped by the KEK and fits Azure's 25 KiB.
  RunResult hs = Diskseal({"vault", "secret", "get", "--json", "diskseal-" + uuid + "-header", "--vault", vp.url(),
                           "--vault-token-file", tok, "--vault-ca", vp.ca()});
  ASSERT_EQ(hs.exit_code, 0) << hs.err;
  auto hj = nlohmann::json::parse(hs.out);
  EXPECT_EQ(hj["contentType"], engine::kContentTypeHeader);
  EXPECT_EQ(hj["tags"]["DisksealHeaderState"], "final");
  EXPECT_NE(hj["tags"]["DiskEncryptionKeyEncryptionKeyURL"].get<std::string>().find("/keys/kek/"), std::string::npos);
  EXPECT_LT(hj["value"].get<std::string>().size(), 25u * 1024);

  // The OS disk is lost: the header is gone.
  ASSERT_EQ(::unlink(hdr.c_str()), 0);
  const std::string run = dir / "run";
  std::vector<std::string> open = {"open", "--userspace", "--run-dir", run, img, "v", "--header", hdr};
  open.insert(open.end(), vault.begin(), vault.end());
  EXPECT_NE(Diskseal(open).exit_code, 0);

  std::vector<std::string> rec = {"recover", img, "--header", rebuilt, "--uuid", uuid};
  rec.insert(rec.end(), vault.begin(), vault.end());
  rec.insert(rec.end(), fast.begin(), fast.end());
  RunResult rc = Diskseal(rec);
  ASSERT_EQ(rc.exit_code, 0) << rc.err;
  EXPECT_NE(rc.out.find("diskseal open " + img), std::string::npos) << rc.out;
  // a second recover does not overwrite the file it wrote
  EXPECT_EQ(Diskseal(rec).exit_code, 5);
  // cryptsetup, the oracle, reads the rebuilt header: same UUID, our token
  RunResult dump = RunProgram({"cryptsetup", "luksDump", rebuilt});
  ASSERT_EQ(dump.exit_code, 0) << dump.err;
  EXPECT_NE(dump.out.find(uuid), std::string::npos) << dump.out;
  EXPECT_NE(dump.out.find("diskseal-escrow"), std::string::npos) << dump.out;
  auto rpin = PinOf(img, rebuilt);
  ASSERT_TRUE(rpin.has_value());
  EXPECT_EQ(rpin->passphrase_secret, pin->passphrase_secret);

  std::vector<std::string> open2 = {"open", "--userspace", "--run-dir", run, img, "v", "--header", rebuilt};
  open2.insert(open2.end(), vault.begin(), vault.end());
  RunResult o = Diskseal(open2);
  ASSERT_EQ(o.exit_code, 0) << o.err;
  for (const auto& [name, content] : files) EXPECT_EQ(DebugfsCat(run + "/v", name), content) << name;
  ASSERT_EQ(Diskseal({"close", "--run-dir", run, "v"}).exit_code, 0);
}

// A header escrowed before the first data block cannot say how far the data got: recover refuses
// it (exit 5, naming why) rather than rebuild a header that would lie; resume escrows the final one.
TEST(EngineVaultTest, RecoverRefusesTheHeaderOfAnUnfinishedEncryption) {
  TempDir dir;
  VaultProcess vp(dir / "vault");
  vp.Start();
  const std::string tok = vp.Token("machine", "secrets:get,secrets:set");
  const std::string img = dir / "disk.img", hdr = dir / "disk.hdr", rebuilt = dir / "rebuilt.hdr";
  Bytes plain = MakeRandomImage(img, 16u << 20, 41);
  const std::vector<std::string> vault = {"--vault", vp.url(), "--vault-token-file", tok, "--vault-ca", vp.ca()};
  std::vector<std::string> enc = {"encrypt", img, "--header", hdr, "--hotzone-size", "1M", "--stop-after", "4M",
                                  "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"};
  enc.insert(enc.end(), vault.begin(), vault.end());
  RunResult r = Diskseal(enc);
  ASSERT_EQ(r.exit_code, 9) << r.err;
  // the stop names the exact command that continues, and the progress never says "done"
  EXPECT_NE(r.err.find("continue with `diskseal resume " + img + " --header " + hdr + " --vault " + vp.url() +
                       " --vault-token-file " + tok + " --vault-ca " + vp.ca() + "`"),
            std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("\"event\":\"done\""), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("\"event\":\"stopped\""), std::string::npos) << r.err;
  std::string uuid;
  auto pin = PinOf(img, hdr, &uuid);
  ASSERT_TRUE(pin.has_value());
  EXPECT_EQ(pin->header_state, "encrypting");

  std::vector<std::string> rec = {"recover", img, "--header", rebuilt, "--uuid", uuid};
  rec.insert(rec.end(), vault.begin(), vault.end());
  RunResult rc = Diskseal(rec);
  EXPECT_EQ(rc.exit_code, 5) << rc.err;
  EXPECT_NE(rc.err.find("before the encryption"), std::string::npos) << rc.err;
  EXPECT_FALSE(std::ifstream(rebuilt).good());

  // resume finishes and escrows the final header; recover then works
  std::vector<std::string> res = {"resume", img, "--header", hdr};
  res.insert(res.end(), vault.begin(), vault.end());
  RunResult rs = Diskseal(res);
  ASSERT_EQ(rs.exit_code, 0) << rs.err;
  EXPECT_NE(rs.err.find("final header escrowed"), std::string::npos) << rs.err;
  EXPECT_EQ(PinOf(img, hdr)->header_state, "final");
  rec.insert(rec.end(), {"--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"});
  RunResult rc2 = Diskseal(rec);
  ASSERT_EQ(rc2.exit_code, 0) << rc2.err;
  const std::string run = dir / "run";
  std::vector<std::string> open = {"open", "--userspace", "--run-dir", run, img, "v", "--header", rebuilt};
  open.insert(open.end(), vault.begin(), vault.end());
  ASSERT_EQ(Diskseal(open).exit_code, 0);
  EXPECT_EQ(ReadFileOrDie(run + "/v"), std::string(plain.begin(), plain.end()));
  ASSERT_EQ(Diskseal({"close", "--run-dir", run, "v"}).exit_code, 0);
}

// Issue 11: open fetches exactly the version the volume pins. A host that may set secrets adds a
// bad newest version of this volume's secret: unattended open (and decrypt) still work.
TEST(EngineVaultTest, ALaterBadSecretVersionDoesNotBreakOpen) {
  TempDir dir;
  VaultProcess vp(dir / "vault");
  vp.Start();
  const std::string tok = vp.Token("machine", "secrets:get,secrets:set");
  const std::string img = dir / "disk.img", hdr = dir / "disk.hdr";
  Bytes plain = MakeRandomImage(img, 16u << 20, 42);
  const std::vector<std::string> vault = {"--vault", vp.url(), "--vault-token-file", tok, "--vault-ca", vp.ca()};
  std::vector<std::string> enc = {"encrypt", img, "--header", hdr, "--hotzone-size", "1M", "--pbkdf", "pbkdf2",
                                  "--pbkdf-force-iterations", "1000"};
  enc.insert(enc.end(), vault.begin(), vault.end());
  ASSERT_EQ(Diskseal(enc).exit_code, 0);
  std::string uuid;
  ASSERT_TRUE(PinOf(img, hdr, &uuid).has_value());

  const std::string other = vp.Token("other-host", "secrets:set");
  RunResult bad = Diskseal({"vault", "secret", "set", "diskseal-" + uuid, "--content-type", "BEK", "--tag",
                            "LuksUuid=" + uuid, "--vault", vp.url(), "--vault-token-file", other, "--vault-ca", vp.ca()},
                           "d3JvbmcgcGFzc3BocmFzZQ==");
  ASSERT_EQ(bad.exit_code, 0) << bad.err;
  // the newest version is the bad one now
  RunResult newest = Diskseal({"vault", "secret", "get", "--json", "diskseal-" + uuid, "--vault", vp.url(),
                               "--vault-token-file", tok, "--vault-ca", vp.ca()});
  ASSERT_EQ(newest.exit_code, 0);
  EXPECT_EQ(nlohmann::json::parse(newest.out)["value"], "d3JvbmcgcGFzc3BocmFzZQ==");

  const std::string run = dir / "run";
  std::vector<std::string> open = {"open", "--userspace", "--run-dir", run, img, "v", "--header", hdr};
  open.insert(open.end(), vault.begin(), vault.end());
  RunResult o = Diskseal(open);
  ASSERT_EQ(o.exit_code, 0) << o.err;
  EXPECT_EQ(ReadFileOrDie(run + "/v"), std::string(plain.begin(), plain.end()));
  ASSERT_EQ(Diskseal({"close", "--run-dir", run, "v"}).exit_code, 0);
  std::vector<std::string> dec = {"decrypt", img, "--header", hdr};
  dec.insert(dec.end(), vault.begin(), vault.end());
  RunResult d = Diskseal(dec);
  ASSERT_EQ(d.exit_code, 0) << d.err;
  EXPECT_EQ(ReadFileOrDie(img), std::string(plain.begin(), plain.end()));
}

// reencrypt makes a new volume key, so the header in the vault goes stale: the pin says so, the
// message names the command, `resume --vault` escrows the new header, and recover then gives back
// a header that opens the data under the new key.
TEST(EngineVaultTest, ReencryptMarksTheEscrowedHeaderStaleAndResumeReplacesIt) {
  TempDir dir;
  VaultProcess vp(dir / "vault");
  vp.Start();
  const std::string tok = vp.Token("machine", "secrets:get,secrets:set");
  const std::string img = dir / "disk.img", hdr = dir / "disk.hdr", rebuilt = dir / "rebuilt.hdr";
  Bytes plain = MakeRandomImage(img, 16u << 20, 43);
  const std::vector<std::string> vault = {"--vault", vp.url(), "--vault-token-file", tok, "--vault-ca", vp.ca()};
  const std::vector<std::string> fast = {"--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"};
  std::vector<std::string> enc = {"encrypt", img, "--header", hdr, "--hotzone-size", "1M"};
  enc.insert(enc.end(), vault.begin(), vault.end());
  enc.insert(enc.end(), fast.begin(), fast.end());
  ASSERT_EQ(Diskseal(enc).exit_code, 0);
  std::string uuid;
  ASSERT_EQ(PinOf(img, hdr, &uuid)->header_state, "final");
  // the escrowed passphrase, as an operator would fetch it, into a key file
  RunResult got = Diskseal({"vault", "secret", "get", "--json", "diskseal-" + uuid, "--vault", vp.url(),
                            "--vault-token-file", tok, "--vault-ca", vp.ca()});
  ASSERT_EQ(got.exit_code, 0) << got.err;
  auto pass = Base64Decode(nlohmann::json::parse(got.out)["value"].get<std::string>());
  ASSERT_TRUE(pass.has_value());
  const std::string kf = dir / "pass.key";
  WriteFile(kf, std::string(pass->begin(), pass->end()));

  std::vector<std::string> re = {"reencrypt", img, "--header", hdr, "-d", kf, "--hotzone-size", "1M"};
  re.insert(re.end(), fast.begin(), fast.end());
  RunResult r = Diskseal(re);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("run `diskseal resume " + img + " --header " + hdr + " --vault"), std::string::npos) << r.err;
  EXPECT_EQ(PinOf(img, hdr)->header_state, "stale");

  std::vector<std::string> res = {"resume", img, "--header", hdr};
  res.insert(res.end(), vault.begin(), vault.end());
  RunResult rs = Diskseal(res);
  ASSERT_EQ(rs.exit_code, 0) << rs.err;
  EXPECT_NE(rs.err.find("final header escrowed"), std::string::npos) << rs.err;
  EXPECT_EQ(PinOf(img, hdr)->header_state, "final");

  ASSERT_EQ(::unlink(hdr.c_str()), 0);
  std::vector<std::string> rec = {"recover", img, "--header", rebuilt, "--uuid", uuid};
  rec.insert(rec.end(), vault.begin(), vault.end());
  rec.insert(rec.end(), fast.begin(), fast.end());
  RunResult rc = Diskseal(rec);
  ASSERT_EQ(rc.exit_code, 0) << rc.err;
  const std::string run = dir / "run";
  std::vector<std::string> open = {"open", "--userspace", "--run-dir", run, img, "v", "--header", rebuilt};
  open.insert(open.end(), vault.begin(), vault.end());
  ASSERT_EQ(Diskseal(open).exit_code, 0);
  EXPECT_EQ(ReadFileOrDie(run + "/v"), std::string(plain.begin(), plain.end()));
  ASSERT_EQ(Diskseal({"close", "--run-dir", run, "v"}).exit_code, 0);
}

}  // namespace
}  // namespace ds::test
