#include "inplace/inplace.h"

#include <gtest/gtest.h>
#include <sys/mount.h>

#include <atomic>
#include <sstream>

#include "engine/volume_escrow.h"
#include "luks2/header_io.h"
#include "luks2/test_util.h"
#include "testlib.h"
#include "vault/escrow.h"
#include "vault_testutil.h"

namespace ds::inplace {
namespace {

constexpr size_t kSize = 8u << 20;

using Loop = test::LoopDevice;

// A mount of `dev` at `dir`, unmounted on destruction.
class Mount {
 public:
  Mount(const std::string& dev, const std::string& dir) : dir_(dir) {
    auto r = test::Run({"mount", dev, dir});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    mounted_ = r.exit_code == 0;
  }
  ~Mount() {
    if (mounted_) ::umount2(dir_.c_str(), 0);
  }

 private:
  std::string dir_;
  bool mounted_ = false;
};

FormatRequest Request(const std::string& device, const std::string& tmp) {
  FormatRequest r;
  r.device = device;
  r.temp_header = tmp;
  r.format = test::FastFormat();
  r.passphrase = []() -> Result<SecureBuffer> {
    SecureBuffer p(2);
    p.data()[0] = 'p';
    p.data()[1] = 'w';
    return p;
  };
  return r;
}

// The data device read through the finished header equals `want`.
void ExpectPlaintext(const std::string& device, const std::string& header, const Bytes& want) {
  auto v = luks2::Volume::Load(*PosixEnv(), device, header, false);
  ASSERT_TRUE(v.ok()) << v.status().message();
  auto u = v->Unlock(AsBytes("pw"));
  ASSERT_TRUE(u.ok()) << u.status().message();
  auto data = v->OpenData({{u->digest, &u->key}});
  ASSERT_TRUE(data.ok()) << data.status().message();
  ASSERT_EQ((*data)->Size(), want.size());
  Bytes got(want.size());
  ASSERT_TRUE((*data)->ReadAt(0, got).ok());
  EXPECT_TRUE(got == want);
}

TEST(InPlace, FormatPlaceRunOfflineEncryptsAFileThatCryptsetupReads) {
  test::TempDir dir;
  const Bytes plain = test::MakeRandomImage(dir / "data", kSize, 7);
  const std::string before = test::Sha256File(dir / "data");
  const std::string hdr = dir / "hdr", tmp = TempHeaderPath(hdr, false);
  EXPECT_EQ(tmp, hdr + ".diskseal-new");
  std::ostringstream log;
  auto made = FormatAndEscrow(*PosixEnv(), Request(dir / "data", tmp), log);
  ASSERT_TRUE(made.ok()) << made.status().message();
  EXPECT_TRUE(made->secret_id.empty());  // no vault
  EXPECT_EQ(made->digest, 0);
  // Step 1 writes only the temp header: the device is untouched, the header not in place.
  EXPECT_TRUE(PosixEnv()->Exists(tmp));
  EXPECT_FALSE(PosixEnv()->Exists(hdr));
  EXPECT_EQ(test::Sha256File(dir / "data"), before);
  ASSERT_TRUE(PlaceHeader(*PosixEnv(), tmp, hdr, false).ok());
  EXPECT_FALSE(PosixEnv()->Exists(tmp));

  RunRequest rr;
  rr.device = dir / "data";
  rr.header = hdr;
  KeyMap keys = {{made->digest, &made->volume_key}};
  rr.known = &keys;
  rr.hotzone_bytes = 1u << 20;
  RunOutcome out;
  Status s = RunOperation(*PosixEnv(), rr, log, &out);
  ASSERT_TRUE(s.ok()) << s.message();
  EXPECT_TRUE(out.had_operation);
  EXPECT_TRUE(out.started);
  EXPECT_EQ(out.mode, engine::Mode::kEncrypt);
  EXPECT_EQ(out.data_size, kSize);
  EXPECT_EQ(out.done_before, 0u);
  EXPECT_TRUE(out.mapping.empty());
  ExpectPlaintext(dir / "data", hdr, plain);
  // Nothing left to run: ok, and says so.
  Status again = RunOperation(*PosixEnv(), rr, log, &out);
  EXPECT_TRUE(again.ok()) << again.message();
  EXPECT_FALSE(out.had_operation);
  // The oracle: cryptsetup opens the finished header with the passphrase.
  auto test_pw = test::Run({"cryptsetup", "open", "--test-passphrase", "--header", hdr, dir / "data"}, "pw");
  EXPECT_EQ(test_pw.exit_code, 0) << test_pw.err;
}

TEST(InPlace, AStoppedRunResumesWithUnlockedKeysAndTheStopSaysSo) {
  test::TempDir dir;
  const Bytes plain = test::MakeRandomImage(dir / "data", kSize, 8);
  const std::string hdr = dir / "hdr", tmp = TempHeaderPath(hdr, false);
  std::ostringstream log;
  auto made = FormatAndEscrow(*PosixEnv(), Request(dir / "data", tmp), log);
  ASSERT_TRUE(made.ok()) << made.status().message();
  ASSERT_TRUE(PlaceHeader(*PosixEnv(), tmp, hdr, false).ok());
  RunRequest rr;
  rr.device = dir / "data";
  rr.header = hdr;
  int unlocks = 0;
  rr.unlock = [&](luks2::Volume& v) {
    ++unlocks;
    return v.UnlockAll(AsBytes("pw"));
  };
  rr.hotzone_bytes = 1u << 20;
  rr.stop_after = 1u << 20;  // stop at the first commit point past 1 MiB
  RunOutcome out;
  Status s = RunOperation(*PosixEnv(), rr, log, &out);
  EXPECT_EQ(s.code(), Code::kInterrupted) << s.message();
  EXPECT_TRUE(out.started);
  EXPECT_FALSE(out.unlocked.empty());  // held for the caller's final step
  // prepare_only: keys and binding checked, nothing run.
  rr.stop_after = 0;
  rr.prepare_only = true;
  ASSERT_TRUE(RunOperation(*PosixEnv(), rr, log, &out).ok());
  EXPECT_TRUE(out.had_operation);
  EXPECT_FALSE(out.started);
  const uint64_t done = out.done_before;
  EXPECT_GT(done, 0u);
  EXPECT_LT(done, kSize);
  rr.prepare_only = false;
  std::atomic<bool> stop{false};
  rr.stop = &stop;
  ASSERT_TRUE(RunOperation(*PosixEnv(), rr, log, &out).ok());
  EXPECT_EQ(out.done_before, done);
  EXPECT_EQ(unlocks, 3);
  ExpectPlaintext(dir / "data", hdr, plain);
}

TEST(InPlace, AWrongPassphraseIsRefusedBeforeAnyDataBlockIsWritten) {
  test::TempDir dir;
  test::MakeRandomImage(dir / "data", kSize, 9);
  const std::string hdr = dir / "hdr", tmp = TempHeaderPath(hdr, false);
  std::ostringstream log;
  ASSERT_TRUE(FormatAndEscrow(*PosixEnv(), Request(dir / "data", tmp), log).ok());
  ASSERT_TRUE(PlaceHeader(*PosixEnv(), tmp, hdr, false).ok());
  const std::string before = test::Sha256File(dir / "data");
  RunRequest rr;
  rr.device = dir / "data";
  rr.header = hdr;
  rr.unlock = [&](luks2::Volume& v) { return v.UnlockAll(AsBytes("wrong")); };
  RunOutcome out;
  Status s = RunOperation(*PosixEnv(), rr, log, &out);
  EXPECT_EQ(s.code(), Code::kPermissionDenied) << s.message();
  EXPECT_FALSE(out.started);
  EXPECT_EQ(test::Sha256File(dir / "data"), before);
}

TEST(InPlace, ALuksDeviceIsRefusedAndNoTempHeaderIsLeft) {
  test::TempDir dir;
  test::MakeRandomImage(dir / "data", 4 * kSize, 10);  // room for a header at its start
  std::ostringstream log;
  // The header at the start of the device: it is a LUKS volume now.
  auto v = luks2::Volume::Format(*PosixEnv(), dir / "data", "", test::FastFormat(), AsBytes("pw"), nullptr, nullptr);
  ASSERT_TRUE(v.ok()) << v.status().message();
  const std::string before = test::Sha256File(dir / "data");
  auto made = FormatAndEscrow(*PosixEnv(), Request(dir / "data", dir / "hdr.new"), log);
  EXPECT_EQ(made.status().code(), Code::kBusy);
  EXPECT_NE(made.status().message().find("already a LUKS volume"), std::string::npos) << made.status().message();
  EXPECT_FALSE(PosixEnv()->Exists(dir / "hdr.new"));
  EXPECT_EQ(test::Sha256File(dir / "data"), before);
}

// The OS-volume shape: the filesystem stays mounted while its header is made; the sector size
// follows the filesystem's block size, and an exclusive (offline) format is refused.
TEST(InPlace, AMountedDeviceGetsItsHeaderWithTheFilesystemsSectorSize) {
  if (!test::HaveProgram("mkfs.ext4")) GTEST_SKIP() << "mkfs.ext4 missing";
  test::TempDir dir;
  test::WriteFile(dir / "img", std::string(kSize, '\0'));
  auto mk = test::Run({"mkfs.ext4", "-q", "-b", "1024", "-F", dir / "img"});
  ASSERT_EQ(mk.exit_code, 0) << mk.err;
  Loop loop(dir / "img");
  ASSERT_FALSE(loop.dev().empty());
  test::Run({"mkdir", "-p", dir / "mnt"});
  Mount mount(loop.dev(), dir / "mnt");
  std::ostringstream log;
  const std::string tmp = dir / "osluksheader";
  FormatRequest offline = Request(loop.dev(), tmp);
  auto refused = FormatAndEscrow(*PosixEnv(), offline, log);
  EXPECT_FALSE(refused.ok());
  EXPECT_FALSE(PosixEnv()->Exists(tmp));
  FormatRequest online = Request(loop.dev(), tmp);
  online.device_mounted = true;
  auto made = FormatAndEscrow(*PosixEnv(), online, log);
  ASSERT_TRUE(made.ok()) << made.status().message();
  auto v = luks2::Volume::Load(*PosixEnv(), loop.dev(), tmp, false);
  ASSERT_TRUE(v.ok()) << v.status().message();
  bool saw_crypt = false;
  for (const auto& seg : luks2::Segments(v->metadata()))
    if (seg.type == "crypt") {
      saw_crypt = true;
      EXPECT_EQ(seg.sector_size, 1024u);
    }
  EXPECT_TRUE(saw_crypt);
  auto st = engine::ReadState(v->metadata(), v->data_device().Size());
  ASSERT_TRUE(st.ok() && *st);
  EXPECT_EQ((*st)->done, 0u);
  // The filesystem is still mounted and writable.
  test::WriteFile(dir / "mnt/still-here", "yes");
  EXPECT_EQ(test::ReadFileOrDie(dir / "mnt/still-here"), "yes");
}

TEST(InPlace, AHeaderDeviceGetsTheHeaderCopiedAndTheTempFileRemoved) {
  test::TempDir dir;
  const Bytes plain = test::MakeRandomImage(dir / "data", kSize, 11);
  test::WriteFile(dir / "hdrdev", std::string(16u << 20, '\0'));
  Loop hdr(dir / "hdrdev");
  ASSERT_FALSE(hdr.dev().empty());
  const std::string tmp = TempHeaderPath(hdr.dev(), true);
  EXPECT_NE(tmp.find("/diskseal-header-"), std::string::npos);
  std::ostringstream log;
  auto made = FormatAndEscrow(*PosixEnv(), Request(dir / "data", tmp), log);
  ASSERT_TRUE(made.ok()) << made.status().message();
  ASSERT_TRUE(PlaceHeader(*PosixEnv(), tmp, hdr.dev(), true).ok());
  EXPECT_FALSE(PosixEnv()->Exists(tmp));
  RunRequest rr;
  rr.device = dir / "data";
  rr.header = hdr.dev();
  KeyMap keys = {{made->digest, &made->volume_key}};
  rr.known = &keys;
  ASSERT_TRUE(RunOperation(*PosixEnv(), rr, log, nullptr).ok());
  ExpectPlaintext(dir / "data", hdr.dev(), plain);
  auto dump = test::Run({"cryptsetup", "luksDump", hdr.dev()});
  EXPECT_EQ(dump.exit_code, 0) << dump.err;
}

TEST(InPlace, InitDecryptRecordsTheDecryptionAndTheRunGivesThePlaintextBack) {
  test::TempDir dir;
  const Bytes plain = test::MakeRandomImage(dir / "data", kSize, 15);
  const std::string hdr = dir / "hdr", tmp = TempHeaderPath(hdr, false);
  std::ostringstream log;
  auto made = FormatAndEscrow(*PosixEnv(), Request(dir / "data", tmp), log);
  ASSERT_TRUE(made.ok()) << made.status().message();
  ASSERT_TRUE(PlaceHeader(*PosixEnv(), tmp, hdr, false).ok());
  RunRequest rr;
  rr.device = dir / "data";
  rr.header = hdr;
  rr.unlock = [](luks2::Volume& v) { return v.UnlockAll(AsBytes("pw")); };
  ASSERT_TRUE(RunOperation(*PosixEnv(), rr, log, nullptr).ok());
  EXPECT_NE(test::Sha256File(dir / "data"), [&] {
    test::TempDir d2;
    test::WriteFile(d2 / "p", std::string(plain.begin(), plain.end()));
    return test::Sha256File(d2 / "p");
  }());

  InitDecryptRequest ir;
  ir.device = dir / "data";
  ir.header = hdr;
  ir.pbkdf = test::FastPbkdf();
  ir.unlock = [](luks2::Volume& v) { return v.Unlock(AsBytes("wrong")); };
  auto refused = InitDecrypt(*PosixEnv(), ir);
  EXPECT_EQ(refused.status().code(), Code::kPermissionDenied);
  ir.unlock = [](luks2::Volume& v) { return v.Unlock(AsBytes("pw")); };
  auto init = InitDecrypt(*PosixEnv(), ir);
  ASSERT_TRUE(init.ok()) << init.status().message();
  ASSERT_EQ(init->state, DecryptInit::kInitialised);
  ASSERT_TRUE(init->unlocked.has_value());
  // Recorded once: asked again, it is in progress.
  auto again = InitDecrypt(*PosixEnv(), ir);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->state, DecryptInit::kInProgress);
  RunOutcome out;
  ASSERT_TRUE(RunOperation(*PosixEnv(), rr, log, &out).ok());
  EXPECT_EQ(out.mode, engine::Mode::kDecrypt);
  const std::string got = test::ReadFileOrDie(dir / "data");
  EXPECT_TRUE(Bytes(got.begin(), got.end()) == plain);
  auto plainly = InitDecrypt(*PosixEnv(), ir);
  ASSERT_TRUE(plainly.ok());
  EXPECT_EQ(plainly->state, DecryptInit::kPlaintext);
}

class InPlaceVault : public ::testing::Test {
 protected:
  void SetUp() override {
    vault_ = std::make_unique<test::VaultProcess>(dir_ / "vault");
    vault_->Start();
    auto c = vault::VaultClient::Create(*PosixEnv(), vault_->ClientOptions(vault_->Token("inplace", "all")));
    ASSERT_TRUE(c.ok()) << c.status().message();
    client_ = std::move(*c);
  }
  test::TempDir dir_;
  std::unique_ptr<test::VaultProcess> vault_;
  std::unique_ptr<vault::VaultClient> client_;
};

TEST_F(InPlaceVault, EscrowIsVerifiedBeforePlacementAndTheFinalHeaderReplacesIt) {
  const Bytes plain = test::MakeRandomImage(dir_ / "data", kSize, 12);
  const std::string hdr = dir_ / "hdr", tmp = TempHeaderPath(hdr, false);
  std::ostringstream log;
  FormatRequest fr = Request(dir_ / "data", tmp);
  fr.vault = client_.get();
  fr.secret_name = [](const std::string& uuid) { return "inplace-" + uuid; };
  auto made = FormatAndEscrow(*PosixEnv(), fr, log);
  ASSERT_TRUE(made.ok()) << made.status().message();
  EXPECT_NE(made->secret_id.find("inplace-" + made->uuid), std::string::npos) << made->secret_id;
  EXPECT_NE(log.str().find("passphrase and header escrowed and verified as"), std::string::npos) << log.str();
  {
    // Pinned in the temp header, before it is placed; the escrowed header is the unfinished one.
    auto v = luks2::Volume::Load(*PosixEnv(), dir_ / "data", tmp, false);
    ASSERT_TRUE(v.ok());
    auto pin = engine::ReadEscrowPin(v->metadata());
    ASSERT_TRUE(pin.ok() && *pin);
    EXPECT_EQ((*pin)->header_state, "encrypting");
    EXPECT_TRUE(engine::FinalHeaderEscrowPending(v->metadata()));
    // The vault gives the passphrase back as escrowed.
    auto pass = engine::FetchPinnedPassphrase(*client_, **pin, made->uuid);
    ASSERT_TRUE(pass.ok()) << pass.status().message();
    EXPECT_EQ(std::string(pass->view()), "pw");
  }
  ASSERT_TRUE(PlaceHeader(*PosixEnv(), tmp, hdr, false).ok());
  RunRequest rr;
  rr.device = dir_ / "data";
  rr.header = hdr;
  KeyMap keys = {{made->digest, &made->volume_key}};
  rr.known = &keys;
  ASSERT_TRUE(RunOperation(*PosixEnv(), rr, log, nullptr).ok());
  FinalEscrowRequest fe;
  fe.device = dir_ / "data";
  fe.header = hdr;
  fe.vault = client_.get();
  fe.keys = &keys;
  fe.failure_context = "final escrow";
  Status s = EscrowFinalHeader(*PosixEnv(), fe, log);
  ASSERT_TRUE(s.ok()) << s.message();
  auto v = luks2::Volume::Load(*PosixEnv(), dir_ / "data", hdr, false);
  ASSERT_TRUE(v.ok());
  auto pin = engine::ReadEscrowPin(v->metadata());
  ASSERT_TRUE(pin.ok() && *pin);
  EXPECT_EQ((*pin)->header_state, "final");
  EXPECT_FALSE(engine::FinalHeaderEscrowPending(v->metadata()));
  // Idempotent: nothing pending, nothing done.
  EXPECT_TRUE(EscrowFinalHeader(*PosixEnv(), fe, log).ok());
  ExpectPlaintext(dir_ / "data", hdr, plain);
}

TEST_F(InPlaceVault, WithoutAVaultTheFinalStepNamesTheCommandAndLeavesThePinPending) {
  test::MakeRandomImage(dir_ / "data", kSize, 13);
  const std::string hdr = dir_ / "hdr", tmp = TempHeaderPath(hdr, false);
  std::ostringstream log;
  FormatRequest fr = Request(dir_ / "data", tmp);
  fr.vault = client_.get();
  auto made = FormatAndEscrow(*PosixEnv(), fr, log);
  ASSERT_TRUE(made.ok()) << made.status().message();
  EXPECT_NE(made->secret_id.find(vault::DefaultSecretName(made->uuid)), std::string::npos) << made->secret_id;
  ASSERT_TRUE(PlaceHeader(*PosixEnv(), tmp, hdr, false).ok());
  RunRequest rr;
  rr.device = dir_ / "data";
  rr.header = hdr;
  rr.unlock = [](luks2::Volume& v) { return v.UnlockAll(AsBytes("pw")); };
  RunOutcome out;
  ASSERT_TRUE(RunOperation(*PosixEnv(), rr, log, &out).ok());
  FinalEscrowRequest fe;
  fe.device = dir_ / "data";
  fe.header = hdr;
  fe.no_vault_note = "run the escrow command";
  SecureBuffer pw(2);
  pw.data()[0] = 'p';
  pw.data()[1] = 'w';
  fe.pass = &pw;
  ASSERT_TRUE(EscrowFinalHeader(*PosixEnv(), fe, log).ok());
  EXPECT_NE(log.str().find("run the escrow command\n"), std::string::npos) << log.str();
  {
    auto v = luks2::Volume::Load(*PosixEnv(), dir_ / "data", hdr, false);
    ASSERT_TRUE(v.ok());
    EXPECT_TRUE(engine::FinalHeaderEscrowPending(v->metadata()));
  }
  // With the vault and only the passphrase (the volume is unlocked for the final key).
  fe.vault = client_.get();
  ASSERT_TRUE(EscrowFinalHeader(*PosixEnv(), fe, log).ok());
  auto v = luks2::Volume::Load(*PosixEnv(), dir_ / "data", hdr, false);
  ASSERT_TRUE(v.ok());
  EXPECT_FALSE(engine::FinalHeaderEscrowPending(v->metadata()));
}

TEST_F(InPlaceVault, AFailedEscrowLeavesNoHeaderAndTheDeviceUntouched) {
  test::MakeRandomImage(dir_ / "data", kSize, 14);
  const std::string before = test::Sha256File(dir_ / "data");
  const std::string hdr = dir_ / "hdr", tmp = TempHeaderPath(hdr, false);
  // A token that may not set secrets: the escrow fails at its first write.
  auto c = vault::VaultClient::Create(*PosixEnv(), vault_->ClientOptions(vault_->Token("readonly", "secrets:get")));
  ASSERT_TRUE(c.ok()) << c.status().message();
  std::ostringstream log;
  FormatRequest fr = Request(dir_ / "data", tmp);
  fr.vault = c->get();
  auto made = FormatAndEscrow(*PosixEnv(), fr, log);
  ASSERT_FALSE(made.ok());
  EXPECT_NE(made.status().message().find("key escrow failed; nothing was written to the device"), std::string::npos)
      << made.status().message();
  EXPECT_FALSE(PosixEnv()->Exists(tmp));
  EXPECT_FALSE(PosixEnv()->Exists(hdr));
  EXPECT_EQ(test::Sha256File(dir_ / "data"), before);
}

}  // namespace
}  // namespace ds::inplace
