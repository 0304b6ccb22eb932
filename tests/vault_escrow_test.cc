// Key escrow end to end against the real vault process: store, read back, unwrap and verify
// before any data is written; refusal (and nothing written) whenever the read-back does not verify.
#include <gtest/gtest.h>

#include "crypto/crypto.h"
#include "testlib.h"
#include "vault/escrow.h"
#include "vault_testutil.h"

namespace ds::test {
namespace {

using vault::EscrowRequest;

// Stands in for the LUKS2 keyslot + digest check the lead's format/encrypt pass as `verify`: a
// PBKDF2-SHA256 digest of the right passphrase, computed before escrow, compared in constant time.
struct Digest {
  Bytes salt = RandomData(32, 7);
  uint8_t digest[32];
  explicit Digest(const SecureBuffer& passphrase) {
    if (!Pbkdf2("sha256", passphrase.span(), salt, 1000, digest).ok()) throw std::runtime_error("pbkdf2");
  }
  Status Verify(const SecureBuffer& candidate) const {
    uint8_t got[32];
    DS_RETURN_IF_ERROR(Pbkdf2("sha256", candidate.span(), salt, 1000, got));
    SecureBuffer g(std::span<const uint8_t>(got, 32));
    if (!g.Equals(std::span<const uint8_t>(digest, 32)))
      return PermissionDenied("passphrase does not match the keyslot digest");
    return Status::Ok();
  }
};

class EscrowTest : public ::testing::Test {
 protected:
  void SetUp() override {
    vault_ = std::make_unique<VaultProcess>(tmp_ / "vault");
    vault_->Start();
    admin_token_ = vault_->Token("admin", "all");
    admin_ = Make(admin_token_);
    auto p = vault::GeneratePassphrase();
    ASSERT_TRUE(p.ok());
    passphrase_ = std::move(*p);
    disk_ = tmp_ / "disk.img";
    MakeRandomImage(disk_, 1 << 16, 42);
    disk_sha_ = Sha256File(disk_);
  }
  std::unique_ptr<vault::VaultClient> Make(const std::string& token) {
    auto c = vault::VaultClient::Create(*PosixEnv(), vault_->ClientOptions(token));
    if (!c.ok()) throw std::runtime_error(c.status().message());
    return std::move(*c);
  }
  // What format/encrypt do: escrow and verify, and only then write the first data block.
  Result<vault::EscrowRecord> EscrowThenWrite(vault::VaultClient& c, const EscrowRequest& req,
                                              const Digest& d) {
    auto rec = vault::EscrowAndVerify(c, passphrase_, req,
                                      [&](const SecureBuffer& p) { return d.Verify(p); });
    if (!rec.ok()) return rec;
    WriteFile(disk_, "encrypted data");
    return rec;
  }
  EscrowRequest Req() {
    EscrowRequest r;
    r.luks_uuid = "0b7e4c1a-93f2-4d55-8d0e-5b1d2c3a4f60";
    r.machine_name = "vm-test";
    return r;
  }

  TempDir tmp_;
  std::unique_ptr<VaultProcess> vault_;
  std::string admin_token_;
  std::unique_ptr<vault::VaultClient> admin_;
  SecureBuffer passphrase_;
  std::string disk_, disk_sha_;
};

TEST_F(EscrowTest, PlainBekRoundTrip) {
  EXPECT_EQ(passphrase_.size(), 48u);
  Digest d(passphrase_);
  auto rec = EscrowThenWrite(*admin_, Req(), d);
  ASSERT_TRUE(rec.ok()) << rec.status().message();
  EXPECT_EQ(rec->secret_name, "diskseal-0b7e4c1a-93f2-4d55-8d0e-5b1d2c3a4f60");
  EXPECT_EQ(rec->content_type, "BEK");
  auto s = admin_->GetSecret(rec->secret_name);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->content_type, "BEK");
  EXPECT_EQ(s->value.view(), Base64Encode(passphrase_.span()));  // ADE's layout: base64 value
  EXPECT_EQ(s->tags.at("DiskEncryptionKeyFileName"), "LinuxPassPhraseFileName");
  EXPECT_EQ(s->tags.at("MachineName"), "vm-test");
  EXPECT_EQ(s->tags.at("LuksUuid"), "0b7e4c1a-93f2-4d55-8d0e-5b1d2c3a4f60");
  auto back = vault::FetchEscrowedPassphrase(*admin_, rec->secret_name);
  ASSERT_TRUE(back.ok()) << back.status().message();
  EXPECT_TRUE(back->Equals(passphrase_.span()));
  EXPECT_NE(Sha256File(disk_), disk_sha_);  // verified, so the data was written
}

TEST_F(EscrowTest, WrappedBekWithEachKekAlgorithm) {
  ASSERT_TRUE(admin_->CreateKey("kek-rsa", "RSA", 2048).ok());
  ASSERT_TRUE(admin_->CreateKey("kek-oct", "oct", 256).ok());
  Digest d(passphrase_);
  struct Case {
    std::string kek, alg;
  };
  for (const Case& c : {Case{"kek-rsa", "RSA-OAEP"}, Case{"kek-rsa", "RSA-OAEP-256"}, Case{"kek-oct", "A256KW"}}) {
    SCOPED_TRACE(c.alg);
    EscrowRequest req = Req();
    req.kek = c.kek;
    req.kek_alg = c.alg;
    req.secret_name = "vol-" + c.kek;
    auto rec = EscrowThenWrite(*admin_, req, d);
    ASSERT_TRUE(rec.ok()) << rec.status().message();
    EXPECT_EQ(rec->content_type, "Wrapped BEK");
    auto kek = admin_->GetKey(c.kek);
    EXPECT_EQ(rec->kek_kid, kek->kid);
    auto s = admin_->GetSecret(req.secret_name, rec->secret_version);
    EXPECT_EQ(s->content_type, "Wrapped BEK");
    EXPECT_EQ(s->tags.at("DiskEncryptionKeyEncryptionAlgorithm"), c.alg);
    EXPECT_EQ(s->tags.at("DiskEncryptionKeyEncryptionKeyURL"), kek->kid);
    EXPECT_NE(s->value.view(), Base64Encode(passphrase_.span()));  // stored wrapped, not plain
    auto back = vault::FetchEscrowedPassphrase(*admin_, req.secret_name);
    ASSERT_TRUE(back.ok()) << back.status().message();
    EXPECT_TRUE(back->Equals(passphrase_.span()));
  }
  // Rotating the KEK does not orphan the escrow: the secret names the exact KEK version.
  ASSERT_EQ(admin_->Call("POST", "/keys/kek-rsa/rotate", "")->status, 200);
  auto back = vault::FetchEscrowedPassphrase(*admin_, "vol-kek-rsa");
  ASSERT_TRUE(back.ok()) << back.status().message();
  EXPECT_TRUE(back->Equals(passphrase_.span()));
}

TEST_F(EscrowTest, RefusedWhenReadBackDoesNotVerify) {
  // The volume's digest is of another passphrase (a header that does not match the key).
  auto other = vault::GeneratePassphrase();
  Digest wrong(*other);
  auto rec = EscrowThenWrite(*admin_, Req(), wrong);
  ASSERT_FALSE(rec.ok());
  EXPECT_EQ(rec.status().code(), Code::kPermissionDenied);
  EXPECT_NE(rec.status().message().find("not verified"), std::string::npos) << rec.status().message();
  EXPECT_EQ(Sha256File(disk_), disk_sha_);  // not a byte written
  // The unverified version was disabled: fetching the newest version fails instead of handing
  // out a key that does not open the volume.
  auto fetched = vault::FetchEscrowedPassphrase(*admin_, vault::DefaultSecretName(Req().luks_uuid));
  EXPECT_EQ(fetched.status().code(), Code::kPermissionDenied);
}

TEST_F(EscrowTest, FetchSkipsAVersionThatFailedVerification) {
  // v1 escrowed and verified; then a second escrow (e.g. a passphrase change) fails to verify.
  Digest d(passphrase_);
  auto good = EscrowThenWrite(*admin_, Req(), d);
  ASSERT_TRUE(good.ok()) << good.status().message();
  SecureBuffer first = passphrase_.Clone();
  passphrase_ = vault::GeneratePassphrase().value();
  auto bad = EscrowThenWrite(*admin_, Req(), d);  // digest is of the first passphrase
  ASSERT_FALSE(bad.ok());
  auto fetched = vault::FetchEscrowedPassphrase(*admin_, good->secret_name);
  ASSERT_TRUE(fetched.ok()) << fetched.status().message();
  EXPECT_TRUE(fetched->Equals(first.span()));
}

TEST_F(EscrowTest, RefusedWhenTokenCannotReadBack) {
  Digest d(passphrase_);
  auto write_only = Make(vault_->Token("writer", "secrets:set"));
  auto rec = EscrowThenWrite(*write_only, Req(), d);
  ASSERT_FALSE(rec.ok());
  EXPECT_EQ(rec.status().code(), Code::kPermissionDenied);
  EXPECT_NE(rec.status().message().find("secrets:get"), std::string::npos) << rec.status().message();
  EXPECT_EQ(Sha256File(disk_), disk_sha_);
}

TEST_F(EscrowTest, RefusedWhenKekCannotUnwrap) {
  ASSERT_TRUE(admin_->CreateKey("kek", "RSA", 2048).ok());
  Digest d(passphrase_);
  auto no_unwrap = Make(vault_->Token("wrapper", "secrets:set,secrets:get,keys:wrap"));
  EscrowRequest req = Req();
  req.kek = "kek";
  auto rec = EscrowThenWrite(*no_unwrap, req, d);
  ASSERT_FALSE(rec.ok());
  EXPECT_EQ(rec.status().code(), Code::kPermissionDenied);
  EXPECT_NE(rec.status().message().find("keys:unwrap"), std::string::npos) << rec.status().message();
  EXPECT_EQ(Sha256File(disk_), disk_sha_);
}

TEST_F(EscrowTest, RefusedWhenVaultIsDown) {
  Digest d(passphrase_);
  admin_.reset();
  auto opts = vault_->ClientOptions(admin_token_);
  ASSERT_EQ(vault_->Stop(SIGTERM), 0);
  auto c = vault::VaultClient::Create(*PosixEnv(), opts);
  ASSERT_TRUE(c.ok());
  auto rec = EscrowThenWrite(**c, Req(), d);
  ASSERT_FALSE(rec.ok());
  EXPECT_EQ(rec.status().code(), Code::kNetwork);
  EXPECT_EQ(Sha256File(disk_), disk_sha_);
}

}  // namespace
}  // namespace ds::test
