// Running a shell script in the real-kernel QEMU guest (scripts/vm/run) from a test: the kernel
// and base initramfs are cached in build/vm-cache and shared by every vm test.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace ds::test {

struct GuestResult {
  int exit_code = -1;   // the script's exit status; 125 when the guest gave no exit marker
  std::string console;  // everything the guest printed (kernel messages included)
};

struct GuestOptions {
  std::vector<std::string> disks;  // raw images: /dev/vda, /dev/vdb, ... in this order
  std::vector<std::string> bins;   // executables copied to /bin with their libraries
  std::vector<std::pair<std::string, std::string>> files;  // host path -> guest path
  int timeout_s = 300;
};

// Writes `script` to a temporary file and runs it in the guest with busybox `sh -e`.
GuestResult RunInGuest(const std::string& script, const GuestOptions& opts);

// The stripped diskseal binary of this build, for GuestOptions::bins.
std::string DisksealBinary();

}  // namespace ds::test
