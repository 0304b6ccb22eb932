#include "crypto/crypto.h"

#include <argon2.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include <cstring>
#include <map>
#include <mutex>
#include <vector>

namespace ds {

namespace {
struct MdCtxFree { void operator()(EVP_MD_CTX* c) const { EVP_MD_CTX_free(c); } };
struct CipherCtxFree { void operator()(EVP_CIPHER_CTX* c) const { EVP_CIPHER_CTX_free(c); } };
using MdCtx = std::unique_ptr<EVP_MD_CTX, MdCtxFree>;
using CipherCtx = std::unique_ptr<EVP_CIPHER_CTX, CipherCtxFree>;

// Digests are fetched explicitly once and kept for the life of the process: with the legacy
// EVP_get_digestbyname, every EVP_DigestInit_ex does an implicit provider fetch under a lock,
// which dominated the AF diffusion (thousands of inits per keyslot) and per-block checksums.
// LUKS2 spells RIPEMD "ripemd160" and whirlpool "whirlpool"; OpenSSL knows both names (whirlpool
// only with its legacy provider loaded). Unknown names are cached as null.
const EVP_MD* FindMd(std::string_view hash) {
  static std::mutex mu;
  static auto* cache = new std::map<std::string, EVP_MD*, std::less<>>();  // never freed
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache->find(hash);
  if (it != cache->end()) return it->second;
  std::string name(hash);
  EVP_MD* md = EVP_MD_fetch(nullptr, name.c_str(), nullptr);
  cache->emplace(std::move(name), md);
  return md;
}
}  // namespace

struct Hasher::Impl {
  MdCtx ctx;
  size_t size = 0;
};
Hasher::Hasher() = default;
Hasher::Hasher(Hasher&&) noexcept = default;
Hasher& Hasher::operator=(Hasher&&) noexcept = default;
Hasher::~Hasher() = default;

Result<Hasher> Hasher::Create(std::string_view hash) {
  const EVP_MD* md = FindMd(hash);
  if (!md) return Unsupported("unknown hash '" + std::string(hash) + "'");
  Hasher h;
  h.impl_ = std::make_unique<Impl>();
  h.impl_->ctx.reset(EVP_MD_CTX_new());
  h.impl_->size = size_t(EVP_MD_get_size(md));
  if (!h.impl_->ctx || EVP_DigestInit_ex(h.impl_->ctx.get(), md, nullptr) != 1) return Internal("digest init");
  return h;
}

Status Hasher::Update(std::span<const uint8_t> data) {
  if (!impl_) return Internal("Hasher used after Final");
  if (EVP_DigestUpdate(impl_->ctx.get(), data.data(), data.size()) != 1) return Internal("digest update");
  return Status::Ok();
}

Result<Bytes> Hasher::Final() {
  if (!impl_) return Internal("Hasher used after Final");
  Bytes out(impl_->size);
  unsigned len = 0;
  const int ok = EVP_DigestFinal_ex(impl_->ctx.get(), out.data(), &len);
  impl_.reset();
  if (ok != 1) return Internal("digest final");
  return out;
}

Status RandomBytes(std::span<uint8_t> out) {
  if (out.empty()) return Status::Ok();
  if (RAND_bytes(out.data(), int(out.size())) != 1) return Internal("RAND_bytes failed");
  return Status::Ok();
}

size_t HashSize(std::string_view hash) {
  const EVP_MD* md = FindMd(hash);
  return md ? size_t(EVP_MD_get_size(md)) : 0;
}

Result<Bytes> HashParts(std::string_view hash,
                        std::initializer_list<std::span<const uint8_t>> parts) {
  const EVP_MD* md = FindMd(hash);
  if (!md) return Unsupported("unknown hash '" + std::string(hash) + "'");
  MdCtx ctx(EVP_MD_CTX_new());
  if (!ctx || EVP_DigestInit_ex(ctx.get(), md, nullptr) != 1) return Internal("digest init");
  for (auto p : parts)
    if (EVP_DigestUpdate(ctx.get(), p.data(), p.size()) != 1) return Internal("digest update");
  Bytes out(size_t(EVP_MD_get_size(md)));
  unsigned len = 0;
  if (EVP_DigestFinal_ex(ctx.get(), out.data(), &len) != 1) return Internal("digest final");
  return out;
}

Status HashBlocks(std::string_view hash, std::span<const uint8_t> data, size_t block,
                  std::span<uint8_t> out) {
  const EVP_MD* md = FindMd(hash);
  if (!md) return Unsupported("unknown hash '" + std::string(hash) + "'");
  const size_t hs = size_t(EVP_MD_get_size(md));
  if (block == 0 || data.size() % block || out.size() != data.size() / block * hs)
    return InvalidArgument("HashBlocks: sizes do not match");
  MdCtx ctx(EVP_MD_CTX_new());
  if (!ctx) return Status(Code::kNoMemory, "digest context");
  for (size_t i = 0; i * block < data.size(); ++i) {
    unsigned len = 0;
    if (EVP_DigestInit_ex(ctx.get(), md, nullptr) != 1 ||
        EVP_DigestUpdate(ctx.get(), data.data() + i * block, block) != 1 ||
        EVP_DigestFinal_ex(ctx.get(), out.data() + i * hs, &len) != 1)
      return Internal("digest");
  }
  return Status::Ok();
}

Result<Bytes> Hash(std::string_view hash, std::span<const uint8_t> data) {
  return HashParts(hash, {data});
}

Status Pbkdf2(std::string_view hash, std::span<const uint8_t> password,
              std::span<const uint8_t> salt, uint32_t iterations, std::span<uint8_t> out) {
  const EVP_MD* md = FindMd(hash);
  if (!md) return Unsupported("unknown PBKDF2 hash '" + std::string(hash) + "'");
  if (iterations == 0) return InvalidArgument("PBKDF2 iterations must be positive");
  static const char kEmpty = 0;
  const char* pw = password.empty() ? &kEmpty : reinterpret_cast<const char*>(password.data());
  if (PKCS5_PBKDF2_HMAC(pw, int(password.size()), salt.data(), int(salt.size()), int(iterations),
                        md, int(out.size()), out.data()) != 1)
    return Internal("PBKDF2 failed");
  return Status::Ok();
}

Status Argon2(Argon2Type type, std::span<const uint8_t> password, std::span<const uint8_t> salt,
              uint32_t time_cost, uint32_t memory_kib, uint32_t parallel, std::span<uint8_t> out) {
  int rc = argon2_hash(time_cost, memory_kib, parallel, password.data(), password.size(),
                       salt.data(), salt.size(), out.data(), out.size(), nullptr, 0,
                       type == Argon2Type::kArgon2i ? Argon2_i : Argon2_id, ARGON2_VERSION_13);
  if (rc == ARGON2_MEMORY_ALLOCATION_ERROR)
    return Status(Code::kNoMemory, "Argon2 could not allocate " + std::to_string(memory_kib) +
                                       " KiB");
  if (rc != ARGON2_OK) return InvalidArgument(std::string("Argon2: ") + argon2_error_message(rc));
  return Status::Ok();
}

namespace {

enum class IvMode { kPlain64, kPlain, kEssiv };

struct CipherSpec {
  const EVP_CIPHER* cipher = nullptr;
  IvMode iv = IvMode::kPlain64;
  size_t key_bytes = 0;  // the data key size (for ESSIV the whole key is hashed for the IV key)
};

Result<CipherSpec> ParseSpec(std::string_view spec, size_t key_bytes) {
  CipherSpec s;
  std::string name;
  if (spec == "aes-xts-plain64" || spec == "aes-xts-plain") {
    if (key_bytes == 32) s.cipher = EVP_aes_128_xts();
    else if (key_bytes == 64) s.cipher = EVP_aes_256_xts();
    else return InvalidArgument("aes-xts needs a 256 or 512-bit key, not " +
                                std::to_string(key_bytes * 8));
    s.iv = spec == "aes-xts-plain" ? IvMode::kPlain : IvMode::kPlain64;
  } else if (spec == "aes-cbc-essiv:sha256" || spec == "aes-cbc-plain64") {
    if (key_bytes == 16) s.cipher = EVP_aes_128_cbc();
    else if (key_bytes == 24) s.cipher = EVP_aes_192_cbc();
    else if (key_bytes == 32) s.cipher = EVP_aes_256_cbc();
    else return InvalidArgument("aes-cbc needs a 128, 192 or 256-bit key");
    s.iv = spec == "aes-cbc-plain64" ? IvMode::kPlain64 : IvMode::kEssiv;
  } else {
    return Unsupported("cipher '" + std::string(spec) +
                       "' is not supported (aes-xts-plain64, aes-xts-plain, "
                       "aes-cbc-essiv:sha256, aes-cbc-plain64 are)");
  }
  s.key_bytes = key_bytes;
  return s;
}

class EvpSectorCipher final : public SectorCipher {
 public:
  EvpSectorCipher(std::string spec, CipherSpec cs, SecureBuffer key)
      : spec_(std::move(spec)), cs_(cs), key_(std::move(key)) {}

  Status Init() {
    enc_.reset(EVP_CIPHER_CTX_new());
    dec_.reset(EVP_CIPHER_CTX_new());
    if (!enc_ || !dec_) return Status(Code::kNoMemory, "cipher context");
    if (EVP_EncryptInit_ex(enc_.get(), cs_.cipher, nullptr, key_.data(), nullptr) != 1 ||
        EVP_DecryptInit_ex(dec_.get(), cs_.cipher, nullptr, key_.data(), nullptr) != 1)
      return InvalidArgument("cipher " + spec_ + " rejected the key (XTS needs two different halves)");
    EVP_CIPHER_CTX_set_padding(enc_.get(), 0);
    EVP_CIPHER_CTX_set_padding(dec_.get(), 0);
    if (cs_.iv == IvMode::kEssiv) {
      DS_ASSIGN_OR_RETURN(Bytes salt, Hash("sha256", key_.span()));
      essiv_key_ = SecureBuffer(salt);
      essiv_.reset(EVP_CIPHER_CTX_new());
      if (EVP_EncryptInit_ex(essiv_.get(), EVP_aes_256_ecb(), nullptr, essiv_key_.data(),
                             nullptr) != 1)
        return Internal("ESSIV init");
      EVP_CIPHER_CTX_set_padding(essiv_.get(), 0);
    }
    return Status::Ok();
  }

  Status Encrypt(std::span<uint8_t> data, uint64_t iv_sector, uint32_t sector_size) override {
    return Run(enc_.get(), true, data, iv_sector, sector_size);
  }
  Status Decrypt(std::span<uint8_t> data, uint64_t iv_sector, uint32_t sector_size) override {
    return Run(dec_.get(), false, data, iv_sector, sector_size);
  }
  Result<std::unique_ptr<SectorCipher>> Clone() const override {
    return SectorCipher::Create(spec_, key_.span());
  }

 private:
  Status Run(EVP_CIPHER_CTX* ctx, bool enc, std::span<uint8_t> data, uint64_t iv_sector,
             uint32_t sector_size) {
    if (sector_size < 512 || sector_size > 4096 || (sector_size & (sector_size - 1)))
      return InvalidArgument("sector size " + std::to_string(sector_size));
    if (data.size() % sector_size) return InvalidArgument("data is not whole sectors");
    uint8_t iv[16];
    for (size_t off = 0; off < data.size(); off += sector_size) {
      uint64_t n = iv_sector + (off / 512);
      std::memset(iv, 0, sizeof iv);
      if (cs_.iv == IvMode::kPlain) n &= 0xffffffffu;
      for (int i = 0; i < 8; ++i) iv[i] = uint8_t(n >> (8 * i));  // little-endian
      if (cs_.iv == IvMode::kEssiv) {
        int outl = 0;
        uint8_t tmp[16];
        if (EVP_EncryptUpdate(essiv_.get(), tmp, &outl, iv, 16) != 1) return Internal("ESSIV");
        std::memcpy(iv, tmp, 16);
      }
      int outl = 0;
      if ((enc ? EVP_EncryptInit_ex(ctx, nullptr, nullptr, nullptr, iv)
               : EVP_DecryptInit_ex(ctx, nullptr, nullptr, nullptr, iv)) != 1)
        return Internal("cipher IV");
      if ((enc ? EVP_EncryptUpdate(ctx, data.data() + off, &outl, data.data() + off,
                                   int(sector_size))
               : EVP_DecryptUpdate(ctx, data.data() + off, &outl, data.data() + off,
                                   int(sector_size))) != 1)
        return Internal("cipher update");
    }
    return Status::Ok();
  }

  std::string spec_;
  CipherSpec cs_;
  SecureBuffer key_;
  SecureBuffer essiv_key_;
  CipherCtx enc_, dec_, essiv_;
};

}  // namespace

Status CheckCipherSpec(std::string_view spec, size_t key_bytes) {
  auto r = ParseSpec(spec, key_bytes);
  return r.ok() ? Status::Ok() : r.status();
}

Result<std::unique_ptr<SectorCipher>> SectorCipher::Create(std::string_view spec,
                                                           std::span<const uint8_t> key) {
  DS_ASSIGN_OR_RETURN(CipherSpec cs, ParseSpec(spec, key.size()));
  auto c = std::make_unique<EvpSectorCipher>(std::string(spec), cs, SecureBuffer(key));
  DS_RETURN_IF_ERROR(c->Init());
  return std::unique_ptr<SectorCipher>(std::move(c));
}

// --- AF splitter ---------------------------------------------------------------------------------
// diffuse(): the buffer is processed in digest-sized chunks; chunk i becomes H(be32(i) || chunk),
// the last, shorter chunk uses a prefix of its hash. Same construction as LUKS1's af.c.

namespace {
Status Diffuse(std::span<uint8_t> buf, std::string_view hash) {
  const EVP_MD* md = FindMd(hash);
  if (!md) return Unsupported("unknown AF hash '" + std::string(hash) + "'");
  const size_t ds = size_t(EVP_MD_get_size(md));
  MdCtx ctx(EVP_MD_CTX_new());
  if (!ctx) return Status(Code::kNoMemory, "digest context");
  uint8_t h[EVP_MAX_MD_SIZE];
  size_t blocks = buf.size() / ds, pad = buf.size() % ds;
  for (size_t i = 0; i < blocks + (pad ? 1 : 0); ++i) {
    size_t len = i < blocks ? ds : pad;
    uint8_t iv[4];
    PutBe32(iv, uint32_t(i));
    unsigned out = 0;
    if (EVP_DigestInit_ex(ctx.get(), md, nullptr) != 1 || EVP_DigestUpdate(ctx.get(), iv, 4) != 1 ||
        EVP_DigestUpdate(ctx.get(), buf.data() + i * ds, len) != 1 || EVP_DigestFinal_ex(ctx.get(), h, &out) != 1) {
      OPENSSL_cleanse(h, sizeof h);
      return Internal("AF digest");
    }
    std::memcpy(buf.data() + i * ds, h, len);
  }
  OPENSSL_cleanse(h, sizeof h);
  return Status::Ok();
}
void XorInto(uint8_t* dst, const uint8_t* a, const uint8_t* b, size_t n) {
  for (size_t i = 0; i < n; ++i) dst[i] = a[i] ^ b[i];
}
}  // namespace

Status AfSplit(std::span<const uint8_t> key, uint32_t stripes, std::string_view hash,
               std::span<uint8_t> out) {
  const size_t n = key.size();
  if (stripes == 0 || out.size() < size_t(stripes) * n) return InvalidArgument("AF buffer size");
  SecureBuffer acc(n);
  std::memset(acc.data(), 0, n);
  DS_RETURN_IF_ERROR(RandomBytes(out.first(size_t(stripes - 1) * n)));
  for (uint32_t i = 0; i + 1 < stripes; ++i) {
    XorInto(acc.data(), acc.data(), out.data() + size_t(i) * n, n);
    DS_RETURN_IF_ERROR(Diffuse(acc.span(), hash));
  }
  XorInto(out.data() + size_t(stripes - 1) * n, acc.data(), key.data(), n);
  return Status::Ok();
}

Status AfMerge(std::span<const uint8_t> split, uint32_t stripes, std::string_view hash,
               std::span<uint8_t> key_out) {
  const size_t n = key_out.size();
  if (stripes == 0 || split.size() < size_t(stripes) * n) return InvalidArgument("AF buffer size");
  SecureBuffer acc(n);
  std::memset(acc.data(), 0, n);
  for (uint32_t i = 0; i + 1 < stripes; ++i) {
    XorInto(acc.data(), acc.data(), split.data() + size_t(i) * n, n);
    DS_RETURN_IF_ERROR(Diffuse(acc.span(), hash));
  }
  XorInto(key_out.data(), acc.data(), split.data() + size_t(stripes - 1) * n, n);
  return Status::Ok();
}

}  // namespace ds
