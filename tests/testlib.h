// Helpers shared by all tests: scratch directories and running real programs (the diskseal
// binary, cryptsetup, mkfs) with captured output. Not thread-safe; one test at a time.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "util/bytes.h"

namespace ds::test {

// A fresh directory under $TMPDIR (default /tmp), removed with its contents on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// A loop device over `file` (root only), detached on destruction; dev() is empty when losetup
// failed (a test failure is recorded).
class LoopDevice {
 public:
  explicit LoopDevice(const std::string& file, bool read_only = false);
  ~LoopDevice();
  LoopDevice(const LoopDevice&) = delete;
  LoopDevice& operator=(const LoopDevice&) = delete;
  const std::string& dev() const { return dev_; }

 private:
  std::string dev_;
};

struct RunResult {
  int exit_code = -1;  // 128+N when killed by signal N
  std::string out, err;
};

// Runs argv[0] (searched in PATH) with the given stdin bytes; waits for it. (Inside a gtest
// fixture, gtest's own Test::Run hides the short name: use RunProgram there.)
RunResult RunProgram(const std::vector<std::string>& argv, const std::string& stdin_data = "");
inline RunResult Run(const std::vector<std::string>& argv, const std::string& stdin_data = "") {
  return RunProgram(argv, stdin_data);
}
// Runs build/diskseal with args.
RunResult Diskseal(const std::vector<std::string>& args, const std::string& stdin_data = "");
bool HaveProgram(const std::string& name);

// Runs argv (searched in PATH) on a new pseudo-terminal: its stdin, stdout, stderr and controlling
// terminal (/dev/tty), as a user at a console. Each time it shows a prompt (a line part starting
// "Enter " or "Verify ") and has turned echo off, the next of `answers` is typed with a newline;
// prompts beyond the answers get end-of-file. `out` is everything written to the terminal
// (stdout and stderr together), `prompts` how many prompts it showed. Bounded to 60 s (then
// killed, exit 128+9).
struct TerminalResult {
  int exit_code = -1;
  std::string out;
  int prompts = 0;
};
TerminalResult RunOnTerminal(const std::vector<std::string>& argv, const std::vector<std::string>& answers);

// Starts argv (stdout and stderr to /dev/null); once `ready()` holds (polled every 200 us; for the
// in-place commands typically: the header is in place, so the operation is under way) waits `ms`
// more, then sends `sig`. Returns the exit code (128+N when killed by signal N; the process's own
// code when it exited before being ready). Waiting for a condition rather than a fixed time keeps
// tests independent of how loaded the machine is; the wait is bounded (60 s).
int RunAndSignalWhen(const std::vector<std::string>& argv, const std::function<bool()>& ready, int ms, int sig);
// The same, ready once `ready_path` exists (right away when it is empty).
int RunAndSignal(const std::vector<std::string>& argv, int ms, int sig, const std::string& ready_path = "");

void WriteFile(const std::string& path, const std::string& data);
std::string ReadFileOrDie(const std::string& path);
Bytes RandomData(size_t n, uint64_t seed);
// Makes a file of `size` bytes filled with seeded pseudo-random data; returns the data.
Bytes MakeRandomImage(const std::string& path, size_t size, uint64_t seed);
std::string Sha256File(const std::string& path);

}  // namespace ds::test
