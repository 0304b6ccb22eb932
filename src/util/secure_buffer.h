// Memory for key material: page-backed, mlock()ed so it never reaches swap, excluded from core
// dumps (MADV_DONTDUMP), and wiped with OPENSSL_cleanse before it is returned to the system.
// Owns its bytes; move-only. Not thread-safe: one owner at a time.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

namespace ds {

class SecureBuffer {
 public:
  SecureBuffer() = default;
  explicit SecureBuffer(size_t size);
  SecureBuffer(std::span<const uint8_t> bytes);  // NOLINT: copies into locked memory
  ~SecureBuffer();
  SecureBuffer(SecureBuffer&& o) noexcept;
  SecureBuffer& operator=(SecureBuffer&& o) noexcept;
  SecureBuffer(const SecureBuffer&) = delete;
  SecureBuffer& operator=(const SecureBuffer&) = delete;

  uint8_t* data() { return data_; }
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  std::span<uint8_t> span() { return {data_, size_}; }
  std::span<const uint8_t> span() const { return {data_, size_}; }
  std::string_view view() const { return {reinterpret_cast<const char*>(data_), size_}; }
  // Shrinks the visible size (the tail is wiped); used after reading a passphrase of unknown length.
  void Truncate(size_t n);
  SecureBuffer Clone() const;
  bool Equals(std::span<const uint8_t> other) const;  // constant time for equal sizes

 private:
  void Release();
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
  size_t mapped_ = 0;
};

// Process-wide hardening for a program that holds keys: no core dumps, not ptrace-attachable
// by other users (PR_SET_DUMPABLE 0). Call once at start.
void HardenProcess();

}  // namespace ds
