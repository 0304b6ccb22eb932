#include "util/secure_buffer.h"

#include <openssl/crypto.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstring>
#include <new>
#include <utility>

namespace ds {

namespace {
size_t PageRound(size_t n) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return ((n + page - 1) / page) * page;
}
}  // namespace

SecureBuffer::SecureBuffer(size_t size) : size_(size) {
  if (size == 0) return;
  mapped_ = PageRound(size);
  void* p = mmap(nullptr, mapped_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  // Best effort: without CAP_IPC_LOCK and a small RLIMIT_MEMLOCK mlock can fail; the memory is
  // still wiped and kept out of core dumps.
  (void)mlock(p, mapped_);
  (void)madvise(p, mapped_, MADV_DONTDUMP);
  data_ = static_cast<uint8_t*>(p);
}

SecureBuffer::SecureBuffer(std::span<const uint8_t> bytes) : SecureBuffer(bytes.size()) {
  if (!bytes.empty()) std::memcpy(data_, bytes.data(), bytes.size());
}

SecureBuffer::~SecureBuffer() { Release(); }

void SecureBuffer::Release() {
  if (data_ != nullptr) {
    OPENSSL_cleanse(data_, mapped_);
    munlock(data_, mapped_);
    munmap(data_, mapped_);
  }
  data_ = nullptr;
  size_ = mapped_ = 0;
}

SecureBuffer::SecureBuffer(SecureBuffer&& o) noexcept
    : data_(std::exchange(o.data_, nullptr)),
      size_(std::exchange(o.size_, 0)),
      mapped_(std::exchange(o.mapped_, 0)) {}

SecureBuffer& SecureBuffer::operator=(SecureBuffer&& o) noexcept {
  if (this != &o) {
    Release();
    data_ = std::exchange(o.data_, nullptr);
    size_ = std::exchange(o.size_, 0);
    mapped_ = std::exchange(o.mapped_, 0);
  }
  return *this;
}

void SecureBuffer::Truncate(size_t n) {
  if (n >= size_) return;
  OPENSSL_cleanse(data_ + n, size_ - n);
  size_ = n;
}

SecureBuffer SecureBuffer::Clone() const { return SecureBuffer(span()); }

bool SecureBuffer::Equals(std::span<const uint8_t> other) const {
  if (other.size() != size_) return false;
  if (size_ == 0) return true;
  return CRYPTO_memcmp(data_, other.data(), size_) == 0;
}

void HardenProcess() {
  struct rlimit no_core = {0, 0};
  setrlimit(RLIMIT_CORE, &no_core);
  prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
}

}  // namespace ds
