#include "util/status.h"

#include <cerrno>
#include <cstring>

namespace ds {

const char* CodeName(Code c) {
  switch (c) {
    case Code::kOk: return "ok";
    case Code::kInvalidArgument: return "invalid-argument";
    case Code::kPermissionDenied: return "permission-denied";
    case Code::kNoMemory: return "no-memory";
    case Code::kCorrupt: return "corrupt";
    case Code::kBusy: return "busy";
    case Code::kIOError: return "io-error";
    case Code::kUnsupported: return "unsupported";
    case Code::kNotFound: return "not-found";
    case Code::kNetwork: return "network";
    case Code::kInterrupted: return "interrupted";
    case Code::kInternal: return "internal";
  }
  return "unknown";
}

std::string Status::ToString() const {
  if (ok()) return "ok";
  return message_;
}

Status PosixError(const std::string& context, int err) {
  Code code;
  switch (err) {
    case ENOENT: case ENXIO: case ENODEV: code = Code::kNotFound; break;
    case EACCES: case EPERM: code = Code::kPermissionDenied; break;
    case EBUSY: case EEXIST: code = Code::kBusy; break;
    case ENOMEM: code = Code::kNoMemory; break;
    case EINVAL: case ENAMETOOLONG: case EISDIR: case ENOTDIR: code = Code::kInvalidArgument; break;
    case EOPNOTSUPP: case ENOSYS: code = Code::kUnsupported; break;
    case EINTR: code = Code::kInterrupted; break;
    default: code = Code::kIOError; break;
  }
  return Status(code, context + ": " + std::strerror(err));
}

int ExitCode(const Status& s) {
  switch (s.code()) {
    case Code::kOk: return 0;
    case Code::kInvalidArgument: return 1;
    case Code::kPermissionDenied: return 2;
    case Code::kNoMemory: return 3;
    case Code::kCorrupt: return 4;
    case Code::kNotFound: return 4;
    case Code::kBusy: return 5;
    case Code::kIOError: return 6;
    case Code::kUnsupported: return 7;
    case Code::kNetwork: return 8;
    case Code::kInterrupted: return 9;
    case Code::kInternal: return 10;
  }
  return 10;
}

}  // namespace ds
