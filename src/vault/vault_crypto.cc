#include "vault/vault_crypto.h"

#include <arpa/inet.h>
#include <sys/stat.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <cstring>
#include <functional>

#include "crypto/crypto.h"

namespace ds::vault {

namespace {
constexpr size_t kGcmNonce = 12, kGcmTag = 16;
constexpr uint8_t kSealVersion = 1;

struct PkeyFree { void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); } };
struct PkeyCtxFree { void operator()(EVP_PKEY_CTX* p) const { EVP_PKEY_CTX_free(p); } };
struct CipherCtxFree { void operator()(EVP_CIPHER_CTX* c) const { EVP_CIPHER_CTX_free(c); } };
struct BnFree { void operator()(BIGNUM* b) const { BN_free(b); } };
struct X509Free { void operator()(X509* x) const { X509_free(x); } };
struct BioFree { void operator()(BIO* b) const { BIO_free(b); } };
using Pkey = std::unique_ptr<EVP_PKEY, PkeyFree>;
using PkeyCtx = std::unique_ptr<EVP_PKEY_CTX, PkeyCtxFree>;
using CipherCtx = std::unique_ptr<EVP_CIPHER_CTX, CipherCtxFree>;
using Bn = std::unique_ptr<BIGNUM, BnFree>;

// The OpenSSL error queue, drained, for messages (and so it never leaks into a later call).
std::string SslError() {
  std::string s;
  while (unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    if (!s.empty()) s += "; ";
    s += buf;
  }
  return s.empty() ? "unknown OpenSSL error" : s;
}

Status SetOaep(EVP_PKEY_CTX* ctx, WrapAlg alg) {
  const EVP_MD* md = alg == WrapAlg::kRsaOaep256 ? EVP_sha256() : EVP_sha1();
  if (EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_OAEP_PADDING) != 1 ||
      EVP_PKEY_CTX_set_rsa_oaep_md(ctx, md) != 1 || EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, md) != 1)
    return Internal("RSA-OAEP setup: " + SslError());
  return Status::Ok();
}

Result<Bytes> RsaEncrypt(EVP_PKEY* pkey, WrapAlg alg, std::span<const uint8_t> in) {
  if (alg == WrapAlg::kA256KW) return InvalidArgument("A256KW needs an oct key, not RSA");
  size_t hlen = alg == WrapAlg::kRsaOaep256 ? 32 : 20;
  size_t max = size_t(EVP_PKEY_get_size(pkey)) - 2 * hlen - 2;
  if (in.empty() || in.size() > max)
    return InvalidArgument(std::string(WrapAlgName(alg)) + " with this key wraps 1.." +
                           std::to_string(max) + " bytes, got " + std::to_string(in.size()));
  PkeyCtx ctx(EVP_PKEY_CTX_new_from_pkey(nullptr, pkey, nullptr));
  if (!ctx || EVP_PKEY_encrypt_init(ctx.get()) != 1) return Internal("RSA encrypt init");
  DS_RETURN_IF_ERROR(SetOaep(ctx.get(), alg));
  size_t len = 0;
  if (EVP_PKEY_encrypt(ctx.get(), nullptr, &len, in.data(), in.size()) != 1)
    return Internal("RSA encrypt: " + SslError());
  Bytes out(len);
  if (EVP_PKEY_encrypt(ctx.get(), out.data(), &len, in.data(), in.size()) != 1)
    return Internal("RSA encrypt: " + SslError());
  out.resize(len);
  return out;
}
}  // namespace

// ---- MasterKey ----

Result<MasterKey> MasterKey::LoadOrCreate(Env& env, const std::string& path, bool create) {
  if (!env.Exists(path)) {
    if (!create) return NotFound(path + ": master key file does not exist");
    SecureBuffer key(32);
    DS_RETURN_IF_ERROR(RandomBytes(key.span()));
    DS_RETURN_IF_ERROR(env.WriteFileAtomic(path, key.view(), 0600));
    return MasterKey(std::move(key));
  }
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return PosixError(path, errno);
  if (st.st_mode & 077)
    return PermissionDenied(path + ": master key file is accessible by group or others (chmod 600)");
  DS_ASSIGN_OR_RETURN(std::string raw, env.ReadFile(path, 64));
  if (raw.size() != 32) {
    OPENSSL_cleanse(raw.data(), raw.size());
    return Corrupt(path + ": master key file must hold exactly 32 bytes");
  }
  SecureBuffer key(AsBytes(raw));
  OPENSSL_cleanse(raw.data(), raw.size());
  return MasterKey(std::move(key));
}

Result<Bytes> MasterKey::Seal(std::span<const uint8_t> plaintext, std::string_view context) const {
  Bytes out(1 + kGcmNonce + plaintext.size() + kGcmTag);
  out[0] = kSealVersion;
  uint8_t* nonce = out.data() + 1;
  DS_RETURN_IF_ERROR(RandomBytes({nonce, kGcmNonce}));
  CipherCtx ctx(EVP_CIPHER_CTX_new());
  int len = 0;
  if (!ctx || EVP_EncryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, key_->data(), nonce) != 1 ||
      EVP_EncryptUpdate(ctx.get(), nullptr, &len, reinterpret_cast<const uint8_t*>(context.data()),
                        int(context.size())) != 1 ||
      EVP_EncryptUpdate(ctx.get(), out.data() + 1 + kGcmNonce, &len, plaintext.data(),
                        int(plaintext.size())) != 1 ||
      EVP_EncryptFinal_ex(ctx.get(), out.data() + 1 + kGcmNonce + len, &len) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_GET_TAG, int(kGcmTag),
                          out.data() + out.size() - kGcmTag) != 1)
    return Internal("AES-GCM seal: " + SslError());
  return out;
}

size_t MasterKey::PlainSize(size_t sealed_size) {
  return sealed_size < 1 + kGcmNonce + kGcmTag ? 0 : sealed_size - 1 - kGcmNonce - kGcmTag;
}

Result<SecureBuffer> MasterKey::Open(std::span<const uint8_t> sealed,
                                     std::string_view context) const {
  SecureBuffer out(PlainSize(sealed.size()));
  DS_ASSIGN_OR_RETURN(size_t n, OpenInto(sealed, context, out.span()));
  out.Truncate(n);
  return out;
}

Result<size_t> MasterKey::OpenInto(std::span<const uint8_t> sealed, std::string_view context,
                                   std::span<uint8_t> out) const {
  if (sealed.size() < 1 + kGcmNonce + kGcmTag || sealed[0] != kSealVersion)
    return Corrupt("sealed value has a bad length or version");
  size_t n = PlainSize(sealed.size());
  if (out.size() < n) return Internal("plaintext buffer too small");
  CipherCtx ctx(EVP_CIPHER_CTX_new());
  int len = 0;
  uint8_t tag[kGcmTag];
  std::memcpy(tag, sealed.data() + sealed.size() - kGcmTag, kGcmTag);
  uint8_t dummy = 0;
  if (!ctx ||
      EVP_DecryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, key_->data(),
                         sealed.data() + 1) != 1 ||
      EVP_DecryptUpdate(ctx.get(), nullptr, &len, reinterpret_cast<const uint8_t*>(context.data()),
                        int(context.size())) != 1 ||
      EVP_DecryptUpdate(ctx.get(), n ? out.data() : &dummy, &len, sealed.data() + 1 + kGcmNonce,
                        int(n)) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_TAG, int(kGcmTag), tag) != 1)
    return Internal("AES-GCM open: " + SslError());
  if (EVP_DecryptFinal_ex(ctx.get(), &dummy, &len) != 1) {
    ERR_clear_error();
    OPENSSL_cleanse(out.data(), n);
    return Corrupt("sealed value does not verify under the master key (wrong key or altered row)");
  }
  return n;
}

// ---- algorithms ----

Result<WrapAlg> ParseWrapAlg(std::string_view name) {
  if (name == "RSA-OAEP") return WrapAlg::kRsaOaep;
  if (name == "RSA-OAEP-256") return WrapAlg::kRsaOaep256;
  if (name == "A256KW") return WrapAlg::kA256KW;
  // RSA1_5 is refused on purpose: PKCS#1 v1.5 decryption is a padding oracle (Bleichenbacher).
  return Unsupported("key wrap algorithm '" + std::string(name) +
                     "' is not supported (RSA-OAEP, RSA-OAEP-256, A256KW)");
}

const char* WrapAlgName(WrapAlg a) {
  switch (a) {
    case WrapAlg::kRsaOaep: return "RSA-OAEP";
    case WrapAlg::kRsaOaep256: return "RSA-OAEP-256";
    case WrapAlg::kA256KW: return "A256KW";
  }
  return "?";
}

// ---- KeyMaterial ----

KeyMaterial::~KeyMaterial() { EVP_PKEY_free(pkey_); }

Result<std::shared_ptr<KeyMaterial>> KeyMaterial::GenerateRsa(int bits) {
  if (bits != 2048 && bits != 3072 && bits != 4096)
    return InvalidArgument("RSA key size must be 2048, 3072 or 4096, got " + std::to_string(bits));
  EVP_PKEY* p = EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", size_t(bits));
  if (!p) return Internal("RSA key generation: " + SslError());
  std::shared_ptr<KeyMaterial> k(new KeyMaterial());
  k->pkey_ = p;
  return k;
}

Result<std::shared_ptr<KeyMaterial>> KeyMaterial::GenerateOct(int bits) {
  if (bits != 256) return InvalidArgument("oct key size must be 256, got " + std::to_string(bits));
  std::shared_ptr<KeyMaterial> k(new KeyMaterial());
  k->oct_ = SecureBuffer(32);
  DS_RETURN_IF_ERROR(RandomBytes(k->oct_.span()));
  return k;
}

Result<std::shared_ptr<KeyMaterial>> KeyMaterial::Deserialize(std::string_view kty,
                                                              std::span<const uint8_t> data) {
  std::shared_ptr<KeyMaterial> k(new KeyMaterial());
  if (kty == "RSA") {
    const uint8_t* p = data.data();
    k->pkey_ = d2i_AutoPrivateKey(nullptr, &p, long(data.size()));
    if (!k->pkey_) return Corrupt("stored RSA key does not parse: " + SslError());
  } else if (kty == "oct") {
    if (data.size() != 32) return Corrupt("stored oct key is not 32 bytes");
    k->oct_ = SecureBuffer(data);
  } else {
    return Corrupt("stored key has unknown type '" + std::string(kty) + "'");
  }
  return k;
}

Result<SecureBuffer> KeyMaterial::Serialize() const {
  if (!pkey_) return oct_.Clone();
  int n = i2d_PrivateKey(pkey_, nullptr);
  if (n <= 0) return Internal("RSA key encode: " + SslError());
  SecureBuffer out(static_cast<size_t>(n));
  uint8_t* p = out.data();
  if (i2d_PrivateKey(pkey_, &p) != n) return Internal("RSA key encode: " + SslError());
  return out;
}

int KeyMaterial::bits() const { return pkey_ ? EVP_PKEY_get_bits(pkey_) : int(oct_.size() * 8); }

static Bytes BnParam(EVP_PKEY* pkey, const char* name) {
  BIGNUM* bn = nullptr;
  if (!pkey || EVP_PKEY_get_bn_param(pkey, name, &bn) != 1) return {};
  Bytes out(size_t(BN_num_bytes(bn)));
  BN_bn2bin(bn, out.data());
  BN_free(bn);
  return out;
}
Bytes KeyMaterial::modulus() const { return BnParam(pkey_, OSSL_PKEY_PARAM_RSA_N); }
Bytes KeyMaterial::exponent() const { return BnParam(pkey_, OSSL_PKEY_PARAM_RSA_E); }

Result<Bytes> KeyMaterial::Wrap(WrapAlg alg, std::span<const uint8_t> in) const {
  if (pkey_) return RsaEncrypt(pkey_, alg, in);
  if (alg != WrapAlg::kA256KW)
    return InvalidArgument(std::string(WrapAlgName(alg)) + " needs an RSA key; this key is oct");
  if (in.size() < 16 || in.size() % 8 != 0 || in.size() > 4096)
    return InvalidArgument("A256KW wraps a multiple of 8 bytes, 16..4096, got " +
                           std::to_string(in.size()));
  CipherCtx ctx(EVP_CIPHER_CTX_new());
  Bytes out(in.size() + 8);
  int len = 0, fin = 0;
  if (!ctx) return Internal("cipher context");
  EVP_CIPHER_CTX_set_flags(ctx.get(), EVP_CIPHER_CTX_FLAG_WRAP_ALLOW);
  if (EVP_EncryptInit_ex(ctx.get(), EVP_aes_256_wrap(), nullptr, oct_.data(), nullptr) != 1 ||
      EVP_EncryptUpdate(ctx.get(), out.data(), &len, in.data(), int(in.size())) != 1 ||
      EVP_EncryptFinal_ex(ctx.get(), out.data() + len, &fin) != 1)
    return Internal("AES key wrap: " + SslError());
  out.resize(size_t(len + fin));
  return out;
}

Result<SecureBuffer> KeyMaterial::Unwrap(WrapAlg alg, std::span<const uint8_t> in) const {
  SecureBuffer out(std::max<size_t>(in.size(), pkey_ ? size_t(EVP_PKEY_get_size(pkey_)) : 0));
  DS_ASSIGN_OR_RETURN(size_t n, UnwrapInto(alg, in, out.span()));
  out.Truncate(n);
  return out;
}

Result<size_t> KeyMaterial::UnwrapInto(WrapAlg alg, std::span<const uint8_t> in,
                                       std::span<uint8_t> out) const {
  if (pkey_) {
    if (alg == WrapAlg::kA256KW) return InvalidArgument("A256KW needs an oct key, not RSA");
    size_t ksize = size_t(EVP_PKEY_get_size(pkey_));
    if (in.size() != ksize)
      return InvalidArgument("wrapped value must be " + std::to_string(ksize) +
                             " bytes for this key, got " + std::to_string(in.size()));
    if (out.size() < ksize) return Internal("unwrap buffer too small");
    PkeyCtx ctx(EVP_PKEY_CTX_new_from_pkey(nullptr, pkey_, nullptr));
    if (!ctx || EVP_PKEY_decrypt_init(ctx.get()) != 1) return Internal("RSA decrypt init");
    DS_RETURN_IF_ERROR(SetOaep(ctx.get(), alg));
    size_t len = out.size();
    if (EVP_PKEY_decrypt(ctx.get(), out.data(), &len, in.data(), in.size()) != 1) {
      ERR_clear_error();
      return InvalidArgument("unwrap failed: the value was not wrapped with this key and " +
                             std::string(WrapAlgName(alg)));
    }
    return len;
  }
  if (alg != WrapAlg::kA256KW)
    return InvalidArgument(std::string(WrapAlgName(alg)) + " needs an RSA key; this key is oct");
  if (in.size() < 24 || in.size() % 8 != 0 || in.size() > 4104)
    return InvalidArgument("A256KW wrapped value must be a multiple of 8 bytes, 24..4104, got " +
                           std::to_string(in.size()));
  if (out.size() < in.size()) return Internal("unwrap buffer too small");
  CipherCtx ctx(EVP_CIPHER_CTX_new());
  int len = 0, fin = 0;
  if (!ctx) return Internal("cipher context");
  EVP_CIPHER_CTX_set_flags(ctx.get(), EVP_CIPHER_CTX_FLAG_WRAP_ALLOW);
  if (EVP_DecryptInit_ex(ctx.get(), EVP_aes_256_wrap(), nullptr, oct_.data(), nullptr) != 1 ||
      EVP_DecryptUpdate(ctx.get(), out.data(), &len, in.data(), int(in.size())) != 1 ||
      EVP_DecryptFinal_ex(ctx.get(), out.data() + len, &fin) != 1) {
    ERR_clear_error();
    OPENSSL_cleanse(out.data(), in.size());
    return InvalidArgument("unwrap failed: the value was not wrapped with this key (A256KW)");
  }
  return size_t(len + fin);
}

Result<Bytes> RsaPublicWrap(std::span<const uint8_t> n, std::span<const uint8_t> e, WrapAlg alg,
                            std::span<const uint8_t> plaintext) {
  Bn bn_n(BN_bin2bn(n.data(), int(n.size()), nullptr));
  Bn bn_e(BN_bin2bn(e.data(), int(e.size()), nullptr));
  OSSL_PARAM_BLD* bld = OSSL_PARAM_BLD_new();
  if (!bn_n || !bn_e || !bld) {
    OSSL_PARAM_BLD_free(bld);
    return Internal("RSA public key: out of memory");
  }
  OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn_n.get());
  OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, bn_e.get());
  OSSL_PARAM* params = OSSL_PARAM_BLD_to_param(bld);
  OSSL_PARAM_BLD_free(bld);
  PkeyCtx ctx(EVP_PKEY_CTX_new_from_name(nullptr, "RSA", nullptr));
  EVP_PKEY* raw = nullptr;
  bool ok = params && ctx && EVP_PKEY_fromdata_init(ctx.get()) == 1 &&
            EVP_PKEY_fromdata(ctx.get(), &raw, EVP_PKEY_PUBLIC_KEY, params) == 1;
  OSSL_PARAM_free(params);
  Pkey pkey(raw);
  if (!ok) return InvalidArgument("RSA public key (n, e) is not valid: " + SslError());
  return RsaEncrypt(pkey.get(), alg, plaintext);
}

// ---- TLS identity ----

namespace {
Result<std::string> Pem(const std::function<int(BIO*)>& write) {
  std::unique_ptr<BIO, BioFree> bio(BIO_new(BIO_s_mem()));
  if (!bio || write(bio.get()) != 1) return Internal("PEM encode: " + SslError());
  char* data = nullptr;
  long n = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, size_t(n));
}

Status AddExt(X509* cert, X509* issuer, int nid, const std::string& value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value.c_str());
  if (!ext) return Internal("certificate extension '" + value + "': " + SslError());
  int rc = X509_add_ext(cert, ext, -1);
  X509_EXTENSION_free(ext);
  return rc == 1 ? Status::Ok() : Internal("add certificate extension: " + SslError());
}

// An unsigned certificate for subject_key, issued by `issuer` (itself when null).
Result<std::unique_ptr<X509, X509Free>> MakeCert(EVP_PKEY* subject_key, const std::string& cn,
                                                 X509* issuer) {
  std::unique_ptr<X509, X509Free> cert(X509_new());
  if (!cert) return Internal("X509_new");
  X509_set_version(cert.get(), 2);
  uint8_t serial[16];
  DS_RETURN_IF_ERROR(RandomBytes(serial));
  serial[0] &= 0x7f;
  Bn bn(BN_bin2bn(serial, sizeof serial, nullptr));
  BN_to_ASN1_INTEGER(bn.get(), X509_get_serialNumber(cert.get()));
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), -3600);
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), 10L * 365 * 24 * 3600);
  X509_NAME* name = X509_get_subject_name(cert.get());
  X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>("diskseal vault"), -1, -1, 0);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  X509_set_issuer_name(cert.get(), issuer ? X509_get_subject_name(issuer) : name);
  X509_set_pubkey(cert.get(), subject_key);
  return cert;
}
}  // namespace

Status CreateTlsIdentity(Env& env, const TlsFiles& files,
                         const std::vector<std::string>& hostnames) {
  Pkey ca_key(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
  Pkey srv_key(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
  if (!ca_key || !srv_key) return Internal("EC key generation: " + SslError());

  DS_ASSIGN_OR_RETURN(auto ca, MakeCert(ca_key.get(), "diskseal vault CA", nullptr));
  DS_RETURN_IF_ERROR(AddExt(ca.get(), ca.get(), NID_basic_constraints, "critical,CA:TRUE,pathlen:0"));
  DS_RETURN_IF_ERROR(AddExt(ca.get(), ca.get(), NID_key_usage, "critical,keyCertSign,cRLSign"));
  DS_RETURN_IF_ERROR(AddExt(ca.get(), ca.get(), NID_subject_key_identifier, "hash"));
  if (X509_sign(ca.get(), ca_key.get(), EVP_sha256()) <= 0) return Internal("sign CA: " + SslError());

  std::string san;
  for (const auto& h : hostnames) {
    unsigned char buf[16];
    bool ip = inet_pton(AF_INET, h.c_str(), buf) == 1 || inet_pton(AF_INET6, h.c_str(), buf) == 1;
    if (!san.empty()) san += ",";
    san += (ip ? "IP:" : "DNS:") + h;
  }
  DS_ASSIGN_OR_RETURN(auto srv, MakeCert(srv_key.get(), hostnames.empty() ? "localhost" : hostnames[0],
                                         ca.get()));
  DS_RETURN_IF_ERROR(AddExt(srv.get(), ca.get(), NID_basic_constraints, "critical,CA:FALSE"));
  DS_RETURN_IF_ERROR(AddExt(srv.get(), ca.get(), NID_key_usage, "critical,digitalSignature"));
  DS_RETURN_IF_ERROR(AddExt(srv.get(), ca.get(), NID_ext_key_usage, "serverAuth"));
  DS_RETURN_IF_ERROR(AddExt(srv.get(), ca.get(), NID_authority_key_identifier, "keyid:always"));
  if (!san.empty()) DS_RETURN_IF_ERROR(AddExt(srv.get(), ca.get(), NID_subject_alt_name, san));
  if (X509_sign(srv.get(), ca_key.get(), EVP_sha256()) <= 0)
    return Internal("sign server certificate: " + SslError());

  auto key_pem = [](EVP_PKEY* k) {
    return Pem([k](BIO* b) {
      return PEM_write_bio_PrivateKey(b, k, nullptr, nullptr, 0, nullptr, nullptr);
    });
  };
  DS_ASSIGN_OR_RETURN(std::string ca_key_pem, key_pem(ca_key.get()));
  DS_ASSIGN_OR_RETURN(std::string srv_key_pem, key_pem(srv_key.get()));
  DS_ASSIGN_OR_RETURN(std::string ca_pem, Pem([&](BIO* b) { return PEM_write_bio_X509(b, ca.get()); }));
  DS_ASSIGN_OR_RETURN(std::string srv_pem,
                      Pem([&](BIO* b) { return PEM_write_bio_X509(b, srv.get()); }));
  // Keys first: a certificate without its key on disk would look like a usable identity.
  DS_RETURN_IF_ERROR(env.WriteFileAtomic(files.ca_key, ca_key_pem, 0600));
  DS_RETURN_IF_ERROR(env.WriteFileAtomic(files.server_key, srv_key_pem, 0600));
  OPENSSL_cleanse(ca_key_pem.data(), ca_key_pem.size());
  OPENSSL_cleanse(srv_key_pem.data(), srv_key_pem.size());
  // The server chain file holds the leaf and the CA so clients that know only the CA verify it.
  DS_RETURN_IF_ERROR(env.WriteFileAtomic(files.server_cert, srv_pem + ca_pem, 0644));
  DS_RETURN_IF_ERROR(env.WriteFileAtomic(files.ca_cert, ca_pem, 0644));
  return Status::Ok();
}

}  // namespace ds::vault
