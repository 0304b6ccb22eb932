// Encrypt in place with the key escrowed in the embedded vault (a real server process on
// loopback): the passphrase is made by diskseal, escrowed, read back and checked against the
// header before the first data block is written; resume/decrypt fetch it from the vault.
#include <gtest/gtest.h>

#include <fstream>

#include "testlib.h"
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

}  // namespace
}  // namespace ds::test
