// Errors as values. Every fallible function returns Status or Result<T>; nothing throws across
// a module boundary. errno is turned into a Status in exactly one place (PosixError).
#pragma once

#include <cassert>
#include <string>
#include <utility>
#include <variant>

namespace ds {

// What went wrong, coarse enough for callers to branch on. Each code has a documented CLI exit
// code (ExitCode below, README "Exit codes"); codes 1-5 mean what they mean for cryptsetup.
enum class Code : int {
  kOk = 0,
  kInvalidArgument,   // a flag, size or name is not acceptable
  kPermissionDenied,  // wrong passphrase, no usable keyslot, vault refused the token
  kNoMemory,
  kCorrupt,           // not LUKS2, damaged header, a rule of the format broken
  kBusy,              // device mounted, open or held; name already in use
  kIOError,           // read/write/sync failed, short device
  kUnsupported,       // unknown requirement, cipher or mode we do not implement
  kNotFound,          // file, device, keyslot, token or secret that does not exist
  kNetwork,           // vault unreachable, TLS or HTTP failure
  kInterrupted,       // stopped by a signal at a commit point; the operation is resumable
  kInternal,
};

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(Code code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return Status(); }
  bool ok() const { return code_ == Code::kOk; }
  Code code() const { return code_; }
  const std::string& message() const { return message_; }

  // Returns a copy with "context: " put in front of the message, for adding the device name or
  // the step at the layer that knows it.
  Status WithContext(const std::string& context) const {
    if (ok()) return *this;
    return Status(code_, context + ": " + message_);
  }
  std::string ToString() const;

 private:
  Code code_ = Code::kOk;
  std::string message_;
};

inline Status InvalidArgument(std::string m) { return {Code::kInvalidArgument, std::move(m)}; }
inline Status PermissionDenied(std::string m) { return {Code::kPermissionDenied, std::move(m)}; }
inline Status Corrupt(std::string m) { return {Code::kCorrupt, std::move(m)}; }
inline Status Busy(std::string m) { return {Code::kBusy, std::move(m)}; }
inline Status IOError(std::string m) { return {Code::kIOError, std::move(m)}; }
inline Status Unsupported(std::string m) { return {Code::kUnsupported, std::move(m)}; }
inline Status NotFound(std::string m) { return {Code::kNotFound, std::move(m)}; }
inline Status NetworkError(std::string m) { return {Code::kNetwork, std::move(m)}; }
inline Status Interrupted(std::string m) { return {Code::kInterrupted, std::move(m)}; }
inline Status Internal(std::string m) { return {Code::kInternal, std::move(m)}; }

// The single place errno becomes a Status: "context: strerror" with a code chosen from errno.
Status PosixError(const std::string& context, int err);

// The process exit code the CLI uses for a Status (README "Exit codes").
int ExitCode(const Status& s);
const char* CodeName(Code c);

// A value or the Status that explains why there is none.
template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}  // NOLINT: implicit by design, like absl::StatusOr
  Result(Status status) : v_(std::move(status)) { assert(!std::get<1>(v_).ok()); }

  bool ok() const { return v_.index() == 0; }
  const Status& status() const {
    static const Status kOk;
    return ok() ? kOk : std::get<1>(v_);
  }
  T& value() & { assert(ok()); return std::get<0>(v_); }
  const T& value() const& { assert(ok()); return std::get<0>(v_); }
  T&& value() && { assert(ok()); return std::get<0>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace ds

#define DS_CONCAT_INNER(a, b) a##b
#define DS_CONCAT(a, b) DS_CONCAT_INNER(a, b)

#define DS_RETURN_IF_ERROR(expr)            \
  do {                                      \
    ::ds::Status ds_status_ = (expr);       \
    if (!ds_status_.ok()) return ds_status_; \
  } while (0)

#define DS_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                             \
  if (!tmp.ok()) return tmp.status();            \
  lhs = std::move(tmp).value()

#define DS_ASSIGN_OR_RETURN(lhs, expr) \
  DS_ASSIGN_OR_RETURN_IMPL(DS_CONCAT(ds_result_, __LINE__), lhs, expr)
