// Encrypt in place with the key escrowed in the embedded vault (a real server process on
// loopback): the passphrase is made by diskseal, escrowed, read back and checked against the
// header before the first data block is written; resume/decrypt fetch it from the vault.
#include <gtest/gtest.h>

#include <sys/stat.h>

#include <fstream>
#include <map>
#include <optional>

#include <nlohmann/json.hpp>

#include "luks2/volume.h"
#include "machine/state.h"
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

// Real loop devices over image files, detached when the test ends.
struct Loops {
  std::vector<std::string> devs;
  ~Loops() {
    for (auto it = devs.rbegin(); it != devs.rend(); ++it) RunProgram({"losetup", "-d", *it});
  }
  std::string Attach(const std::string& img) {
    RunResult r = RunProgram({"losetup", "-f", "--show", img});
    std::string dev = r.exit_code == 0 ? r.out.substr(0, r.out.find('\n')) : "";
    if (!dev.empty()) devs.push_back(dev);
    return dev;
  }
};

// The volume-header findings of `doctor --json` (this machine's other findings are not this
// test's: other programs run here at the same time).
std::vector<nlohmann::json> HeaderFindings(const std::vector<std::string>& args) {
  std::vector<std::string> cmd = {"doctor", "--json"};
  cmd.insert(cmd.end(), args.begin(), args.end());
  RunResult r = Diskseal(cmd);
  std::vector<nlohmann::json> out;
  auto j = nlohmann::json::parse(r.out, nullptr, false);
  if (!j.is_object()) {
    ADD_FAILURE() << "doctor --json printed no JSON: " << r.out << r.err;
    return out;
  }
  for (const auto& f : j["findings"])
    if (f["check"] == "volume-header") out.push_back(f);
  return out;
}

bool EvidenceHas(const nlohmann::json& f, const std::string& part) {
  for (const auto& e : f["evidence"])
    if (e.get<std::string>().find(part) != std::string::npos) return true;
  return false;
}

// A state record as enable writes it, for a volume encrypted on `dev` with header `hdr`.
void Record(const std::string& state, const std::string& uuid, const std::string& dev, const std::string& hdr,
            const std::string& secret_id) {
  machine::StateDir sd(*PosixEnv(), state);
  ASSERT_TRUE(sd.Prepare().ok());
  machine::VolumeRecord rec;
  rec.name = uuid;
  rec.device = dev;
  rec.mountpoint = "/srv/t-" + uuid.substr(0, 8);
  rec.fstype = "ext4";
  rec.header = hdr;
  rec.key_file = state + "/keys/" + uuid + ".key";
  rec.secret_id = secret_id;
  rec.step = machine::Step::kConfigured;
  ASSERT_TRUE(sd.Save(rec).ok());
}

// Issue 13: the OS volume's header on plaintext /boot is a single point of failure. On a real loop
// device: doctor notices the recorded header missing (blocking, the way out named) and, with the
// vault, that the vault holds a final header; `repair --vault` restores it; the files read back;
// a header that loads is not "repaired"; one whose both copies are destroyed is put back, the
// damaged file kept beside it.
TEST(EngineVaultTest, DoctorNoticesAMissingHeaderAndRepairRestoresItFromTheVault) {
  TempDir dir;
  VaultProcess vp(dir / "vault");
  vp.Start();
  const std::string tok = vp.Token("machine", "secrets:get,secrets:set");
  const std::string img = dir / "disk.img", hdr = dir / "boot/luks/osluksheader", state = dir / "state";
  ASSERT_EQ(::mkdir((dir / "boot").c_str(), 0755), 0);
  ASSERT_EQ(::mkdir((dir / "boot/luks").c_str(), 0755), 0);
  std::map<std::string, std::string> files;
  ASSERT_EQ(MakeExt4WithFiles(dir.path(), img, files), "");
  Loops loops;
  const std::string dev = loops.Attach(img);
  ASSERT_FALSE(dev.empty());
  const std::vector<std::string> vault = {"--vault", vp.url(), "--vault-token-file", tok, "--vault-ca", vp.ca()};
  const std::vector<std::string> fast = {"--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"};
  std::vector<std::string> enc = {"encrypt", dev, "--header", hdr, "--hotzone-size", "1M"};
  enc.insert(enc.end(), vault.begin(), vault.end());
  enc.insert(enc.end(), fast.begin(), fast.end());
  RunResult r = Diskseal(enc);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::string uuid;
  auto pin = PinOf(dev, hdr, &uuid);
  ASSERT_TRUE(pin.has_value());
  ASSERT_EQ(pin->header_state, "final");
  Record(state, uuid, dev, hdr, pin->passphrase_secret);

  // header in place: fine; without the vault the stale check says it was skipped
  auto f = HeaderFindings({"--state-dir", state});
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0]["severity"], "info");
  EXPECT_NE(f[0]["message"].get<std::string>().find("stale check skipped"), std::string::npos) << f[0];
  std::vector<std::string> with_vault = {"--state-dir", state};
  with_vault.insert(with_vault.end(), vault.begin(), vault.end());
  f = HeaderFindings(with_vault);
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0]["severity"], "info") << f[0];
  EXPECT_NE(f[0]["message"].get<std::string>().find("is not older than the header escrowed"), std::string::npos) << f[0];

  // repair --vault refuses a header that loads: nothing to restore, nothing changed
  const std::string sum = Sha256File(hdr);
  std::vector<std::string> rep = {"repair", dev, "--header", hdr, "--uuid", uuid};
  rep.insert(rep.end(), vault.begin(), vault.end());
  rep.insert(rep.end(), fast.begin(), fast.end());
  RunResult same = Diskseal(rep);
  EXPECT_EQ(same.exit_code, 1) << same.err;
  EXPECT_NE(same.err.find("nothing to restore from the vault"), std::string::npos) << same.err;
  EXPECT_EQ(std::count(same.err.begin(), same.err.end(), '\n'), 1) << same.err;
  EXPECT_EQ(Sha256File(hdr), sum);

  // /boot lost the header
  ASSERT_EQ(::unlink(hdr.c_str()), 0);
  f = HeaderFindings({"--state-dir", state});
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0]["severity"], "blocking");
  EXPECT_NE(f[0]["message"].get<std::string>().find(hdr + " of " + dev + " is missing"), std::string::npos) << f[0];
  EXPECT_NE(f[0]["fix"].get<std::string>().find("diskseal repair " + dev + " --header " + hdr + " --uuid " + uuid),
            std::string::npos) << f[0];
  f = HeaderFindings(with_vault);
  ASSERT_EQ(f.size(), 1u);
  EXPECT_TRUE(EvidenceHas(f[0], "(final)")) << f[0];
  EXPECT_NE(f[0]["fix"].get<std::string>().find("rebuild it from the vault: diskseal repair"), std::string::npos) << f[0];

  RunResult rs = Diskseal(rep);
  ASSERT_EQ(rs.exit_code, 0) << rs.err;
  EXPECT_NE(rs.out.find("header restored from the vault into " + hdr), std::string::npos) << rs.out;
  EXPECT_EQ(HeaderFindings(with_vault)[0]["severity"], "info");
  const std::string run = dir / "run";
  std::vector<std::string> open = {"open", "--userspace", "--run-dir", run, dev, "v", "--header", hdr};
  open.insert(open.end(), vault.begin(), vault.end());
  RunResult o = Diskseal(open);
  ASSERT_EQ(o.exit_code, 0) << o.err;
  for (const auto& [name, content] : files) EXPECT_EQ(DebugfsCat(run + "/v", name), content) << name;
  ASSERT_EQ(Diskseal({"close", "--run-dir", run, "v"}).exit_code, 0);

  // both copies destroyed: unreadable; repair puts it back and keeps the damaged file
  const std::string junk(1 << 20, 'z');
  WriteFile(hdr, junk);
  f = HeaderFindings({"--state-dir", state});
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0]["severity"], "blocking");
  EXPECT_NE(f[0]["message"].get<std::string>().find("does not read as a LUKS2 header"), std::string::npos) << f[0];
  RunResult rs2 = Diskseal(rep);
  ASSERT_EQ(rs2.exit_code, 0) << rs2.err;
  EXPECT_NE(rs2.err.find("kept as " + hdr + ".damaged"), std::string::npos) << rs2.err;
  EXPECT_EQ(ReadFileOrDie(hdr + ".damaged"), junk);
  RunResult o2 = Diskseal(open);
  ASSERT_EQ(o2.exit_code, 0) << o2.err;
  EXPECT_EQ(DebugfsCat(run + "/v", "a.txt"), files["a.txt"]);
  ASSERT_EQ(Diskseal({"close", "--run-dir", run, "v"}).exit_code, 0);
}

// repair --vault refuses, with one line and nothing changed: when the vault holds only the header
// escrowed before the encryption finished, and when the rebuilt header does not belong to the
// device (another loop device of the same size). Doctor calls a header older than the vault's
// final one stale (blocking); `resume --vault` is what escrows a pending final header.
TEST(EngineVaultTest, RepairRefusesAnUnfinishedEscrowAndAnotherDeviceAndDoctorSeesAStaleHeader) {
  TempDir dir;
  VaultProcess vp(dir / "vault");
  vp.Start();
  const std::string tok = vp.Token("machine", "secrets:get,secrets:set");
  const std::string img = dir / "disk.img", other_img = dir / "other.img", hdr = dir / "disk.hdr",
                    old = dir / "disk.hdr.old", state = dir / "state";
  std::map<std::string, std::string> files;
  ASSERT_EQ(MakeExt4WithFiles(dir.path(), img, files), "");
  ASSERT_EQ(RunProgram({"truncate", "-s", "24M", other_img}).exit_code, 0);
  ASSERT_EQ(RunProgram({"mkfs.ext4", "-q", "-F", other_img}).exit_code, 0);
  Loops loops;
  const std::string dev = loops.Attach(img), other = loops.Attach(other_img);
  ASSERT_FALSE(dev.empty());
  ASSERT_FALSE(other.empty());
  const std::vector<std::string> vault = {"--vault", vp.url(), "--vault-token-file", tok, "--vault-ca", vp.ca()};
  const std::vector<std::string> fast = {"--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"};
  std::vector<std::string> enc = {"encrypt", dev, "--header", hdr, "--hotzone-size", "1M", "--stop-after", "4M"};
  enc.insert(enc.end(), vault.begin(), vault.end());
  enc.insert(enc.end(), fast.begin(), fast.end());
  ASSERT_EQ(Diskseal(enc).exit_code, 9);
  std::string uuid;
  auto pin = PinOf(dev, hdr, &uuid);
  ASSERT_TRUE(pin.has_value());
  ASSERT_EQ(pin->header_state, "encrypting");
  Record(state, uuid, dev, hdr, pin->passphrase_secret);
  WriteFile(old, ReadFileOrDie(hdr));  // a backup of the header taken mid-encryption

  // only the "encrypting" header in the vault: repair refuses, nothing written
  const std::string dev_sum = Sha256File(img);
  ASSERT_EQ(::rename(hdr.c_str(), (dir / "aside.hdr").c_str()), 0);
  std::vector<std::string> rep = {"repair", dev, "--header", hdr, "--uuid", uuid};
  rep.insert(rep.end(), vault.begin(), vault.end());
  rep.insert(rep.end(), fast.begin(), fast.end());
  RunResult r1 = Diskseal(rep);
  EXPECT_EQ(r1.exit_code, 5) << r1.err;
  EXPECT_NE(r1.err.find("before the encryption of " + dev + " finished"), std::string::npos) << r1.err;
  EXPECT_EQ(std::count(r1.err.begin(), r1.err.end(), '\n'), 1) << r1.err;
  EXPECT_NE(::access(hdr.c_str(), F_OK), 0);
  EXPECT_NE(::access((hdr + ".diskseal-restored").c_str(), F_OK), 0);
  EXPECT_EQ(Sha256File(img), dev_sum);
  std::vector<std::string> with_vault = {"--state-dir", state};
  with_vault.insert(with_vault.end(), vault.begin(), vault.end());
  auto f = HeaderFindings(with_vault);
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0]["severity"], "blocking");
  EXPECT_NE(f[0]["fix"].get<std::string>().find("the vault holds only the header escrowed before"), std::string::npos) << f[0];

  // finish the encryption: the final header goes to the vault
  ASSERT_EQ(::rename((dir / "aside.hdr").c_str(), hdr.c_str()), 0);
  std::vector<std::string> res = {"resume", dev, "--header", hdr};
  res.insert(res.end(), vault.begin(), vault.end());
  RunResult rs = Diskseal(res);
  ASSERT_EQ(rs.exit_code, 0) << rs.err;
  ASSERT_EQ(PinOf(dev, hdr)->header_state, "final");
  EXPECT_EQ(HeaderFindings(with_vault)[0]["severity"], "info");

  // /boot restored from the backup taken mid-encryption: stale
  const std::string current = ReadFileOrDie(hdr);
  WriteFile(hdr, ReadFileOrDie(old));
  f = HeaderFindings(with_vault);
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0]["severity"], "blocking") << f[0];
  EXPECT_NE(f[0]["message"].get<std::string>().find(hdr + " is stale"), std::string::npos) << f[0];
  EXPECT_NE(f[0]["message"].get<std::string>().find("still records an operation in progress"), std::string::npos) << f[0];
  EXPECT_NE(f[0]["fix"].get<std::string>().find("mv " + hdr + " " + hdr + ".stale"), std::string::npos) << f[0];
  // without the vault, doctor cannot tell, and says so
  f = HeaderFindings({"--state-dir", state});
  EXPECT_NE(f[0]["message"].get<std::string>().find("stale check skipped"), std::string::npos) << f[0];
  WriteFile(hdr, current);

  // the header rebuilt for another device of the same size: refused by the binding, nothing written
  const std::string hdr2 = dir / "other.hdr", other_sum = Sha256File(other_img);
  std::vector<std::string> wrong = {"repair", other, "--header", hdr2, "--uuid", uuid};
  wrong.insert(wrong.end(), vault.begin(), vault.end());
  wrong.insert(wrong.end(), fast.begin(), fast.end());
  RunResult w = Diskseal(wrong);
  EXPECT_EQ(w.exit_code, 4) << w.err;
  EXPECT_NE(w.err.find("belongs to another device than " + other), std::string::npos) << w.err;
  EXPECT_EQ(std::count(w.err.begin(), w.err.end(), '\n'), 1) << w.err;
  EXPECT_NE(::access(hdr2.c_str(), F_OK), 0);
  EXPECT_NE(::access((hdr2 + ".diskseal-restored").c_str(), F_OK), 0);
  EXPECT_EQ(Sha256File(other_img), other_sum);
}

}  // namespace
}  // namespace ds::test
