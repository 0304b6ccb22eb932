#include "guest.h"

#include <unistd.h>

#include "testlib.h"

namespace ds::test {

GuestResult RunInGuest(const std::string& script, const GuestOptions& opts) {
  TempDir dir;
  WriteFile(dir / "test.sh", script);
  std::vector<std::string> argv = {std::string(DISKSEAL_SOURCE_DIR) + "/scripts/vm/run",
                                   "--cache", DISKSEAL_VM_CACHE, "--timeout",
                                   std::to_string(opts.timeout_s)};
  for (const auto& d : opts.disks) argv.insert(argv.end(), {"--disk", d});
  for (const auto& b : opts.bins) argv.insert(argv.end(), {"--bin", b});
  for (const auto& [src, dst] : opts.files) argv.insert(argv.end(), {"--file", src + ":" + dst});
  argv.push_back(dir / "test.sh");
  RunResult r = Run(argv);
  return {r.exit_code, r.out + r.err};
}

std::string DisksealBinary() { return DISKSEAL_BIN; }

}  // namespace ds::test
