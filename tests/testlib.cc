#include "testlib.h"

#include <fcntl.h>
#include <poll.h>
#include <pty.h>
#include <termios.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <stdexcept>
#include <thread>

#include <gtest/gtest.h>

#include "crypto/crypto.h"

extern char** environ;

namespace ds::test {

namespace {
// The device locks (io/device_claim.h) of every command a test runs live in one directory shared
// by all test processes on the machine, not in the machine's real /run/diskseal/locks.
[[maybe_unused]] const bool kLockDirSet = [] {
  const char* base = std::getenv("TMPDIR");
  const std::string dir = std::string(base && *base ? base : "/tmp") + "/diskseal-test-locks";
  return ::setenv("DISKSEAL_LOCK_DIR", dir.c_str(), 0) == 0;
}();
}  // namespace

TempDir::TempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string tmpl = std::string(base && *base ? base : "/tmp") + "/diskseal-test-XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back(0);
  if (!mkdtemp(buf.data())) throw std::runtime_error("mkdtemp failed");
  path_ = buf.data();
}

TempDir::~TempDir() {
  // DISKSEAL_KEEP_FAILED=1: a failed test's directory (a guest's disk and console, a vault's
  // files) is kept for a post-mortem instead of removed.
  if (const char* keep = std::getenv("DISKSEAL_KEEP_FAILED"); keep && *keep == '1' && ::testing::Test::HasFailure()) {
    std::fprintf(stderr, "kept %s (DISKSEAL_KEEP_FAILED)\n", path_.c_str());
    return;
  }
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

RunResult RunProgram(const std::vector<std::string>& argv, const std::string& stdin_data) {
  int in[2], out[2], err[2];
  if (pipe2(in, O_CLOEXEC) || pipe2(out, O_CLOEXEC) || pipe2(err, O_CLOEXEC))
    throw std::runtime_error("pipe");
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, in[0], 0);
  posix_spawn_file_actions_adddup2(&fa, out[1], 1);
  posix_spawn_file_actions_adddup2(&fa, err[1], 2);
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid;
  int rc = posix_spawnp(&pid, args[0], &fa, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  close(in[0]);
  close(out[1]);
  close(err[1]);
  RunResult r;
  if (rc != 0) {
    close(in[1]);
    close(out[0]);
    close(err[0]);
    r.exit_code = 127;
    r.err = "spawn " + argv[0] + ": " + std::strerror(rc);
    return r;
  }
  size_t written = 0;
  if (stdin_data.empty()) {
    close(in[1]);
    in[1] = -1;
  }
  fcntl(in[1], F_SETFL, O_NONBLOCK);
  bool out_open = true, err_open = true;
  char buf[65536];
  while (out_open || err_open) {
    pollfd fds[3];
    int n = 0;
    int oi = -1, ei = -1, ii = -1;
    if (out_open) { oi = n; fds[n++] = {out[0], POLLIN, 0}; }
    if (err_open) { ei = n; fds[n++] = {err[0], POLLIN, 0}; }
    if (in[1] >= 0) { ii = n; fds[n++] = {in[1], POLLOUT, 0}; }
    if (poll(fds, nfds_t(n), -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (ii >= 0 && (fds[ii].revents & (POLLOUT | POLLERR | POLLHUP))) {
      ssize_t w = write(in[1], stdin_data.data() + written, stdin_data.size() - written);
      if (w > 0) written += size_t(w);
      if (w < 0 || written == stdin_data.size()) {
        close(in[1]);
        in[1] = -1;
      }
    }
    auto drain = [&](int idx, int fd, bool& open, std::string& dst) {
      if (idx >= 0 && (fds[idx].revents & (POLLIN | POLLHUP | POLLERR))) {
        ssize_t k = read(fd, buf, sizeof buf);
        if (k <= 0) open = false;
        else dst.append(buf, size_t(k));
      }
    };
    drain(oi, out[0], out_open, r.out);
    drain(ei, err[0], err_open, r.err);
  }
  if (in[1] >= 0) close(in[1]);
  close(out[0]);
  close(err[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

RunResult Diskseal(const std::vector<std::string>& args, const std::string& stdin_data) {
  std::vector<std::string> argv{DISKSEAL_BIN};
  argv.insert(argv.end(), args.begin(), args.end());
  return RunProgram(argv, stdin_data);
}

int RunAndSignalWhen(const std::vector<std::string>& argv, const std::function<bool()>& ready, int ms, int sig) {
  std::vector<char*> args;
  for (auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
  pid_t pid;
  int rc = posix_spawnp(&pid, args[0], &fa, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) return -1;
  auto code = [](int status) { return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status); };
  int status = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (!ready() && std::chrono::steady_clock::now() < deadline) {
    if (::waitpid(pid, &status, WNOHANG) == pid) return code(status);
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  ::kill(pid, sig);
  ::waitpid(pid, &status, 0);
  return code(status);
}

int RunAndSignal(const std::vector<std::string>& argv, int ms, int sig, const std::string& ready_path) {
  return RunAndSignalWhen(
      argv, [&] { return ready_path.empty() || ::access(ready_path.c_str(), F_OK) == 0; }, ms, sig);
}

bool HaveProgram(const std::string& name) {
  return RunProgram({"sh", "-c", "command -v " + name}).exit_code == 0;
}

LoopDevice::LoopDevice(const std::string& file, bool read_only) {
  std::vector<std::string> a = {"losetup", "-f", "--show"};
  if (read_only) a.push_back("-r");
  a.push_back(file);
  RunResult r = RunProgram(a);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  if (r.exit_code != 0) return;
  dev_ = r.out;
  while (!dev_.empty() && (dev_.back() == '\n' || dev_.back() == ' ')) dev_.pop_back();
}

LoopDevice::~LoopDevice() {
  if (!dev_.empty()) RunProgram({"losetup", "-d", dev_});
}

void WriteFile(const std::string& path, const std::string& data) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(data.data(), std::streamsize(data.size()));
  if (!f) throw std::runtime_error("write " + path);
}

std::string ReadFileOrDie(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("read " + path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

Bytes RandomData(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  Bytes b(n);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t v = rng();
    std::memcpy(b.data() + i, &v, 8);
  }
  for (; i < n; ++i) b[i] = uint8_t(rng());
  return b;
}

Bytes MakeRandomImage(const std::string& path, size_t size, uint64_t seed) {
  Bytes b = RandomData(size, seed);
  WriteFile(path, std::string(b.begin(), b.end()));
  return b;
}

std::string Sha256File(const std::string& path) {
  std::string data = ReadFileOrDie(path);
  auto h = Hash("sha256", AsBytes(data));
  return h.ok() ? HexEncode(*h) : "";
}

}  // namespace ds::test

namespace ds::test {

namespace {
int CountPrompts(const std::string& out) {
  int n = 0;
  for (const char* p : {"Enter ", "Verify "})
    for (size_t at = out.find(p); at != std::string::npos; at = out.find(p, at + 1)) ++n;
  return n;
}
}  // namespace

TerminalResult RunOnTerminal(const std::vector<std::string>& argv, const std::vector<std::string>& answers) {
  TerminalResult r;
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  int master = -1;
  const pid_t pid = forkpty(&master, nullptr, nullptr, nullptr);
  if (pid < 0) throw std::runtime_error("forkpty");
  if (pid == 0) {
    execvp(args[0], args.data());
    _exit(127);
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  size_t answered = 0;
  char buf[4096];
  for (;;) {
    if (std::chrono::steady_clock::now() > deadline) {
      kill(pid, SIGKILL);
      break;
    }
    // Type the next answer once its prompt is shown and echo is off (the prompt turns echo off
    // with TCSAFLUSH, which would drop what was typed before).
    struct termios t;
    if (int(answered) < r.prompts && tcgetattr(master, &t) == 0 && !(t.c_lflag & ECHO)) {
      const std::string line = answered < answers.size() ? answers[answered] + "\n" : std::string("\x04");
      if (write(master, line.data(), line.size()) < 0) break;
      ++answered;
    }
    pollfd pf{master, POLLIN, 0};
    const int pr = poll(&pf, 1, 5);  // short: the echo state changes without output
    if (pr < 0 && errno != EINTR) break;
    if (pr <= 0) continue;
    const ssize_t n = read(master, buf, sizeof buf);
    if (n <= 0) break;  // EIO: every copy of the terminal's other side is closed
    r.out.append(buf, size_t(n));
    r.prompts = CountPrompts(r.out);
  }
  close(master);
  int status = 0;
  waitpid(pid, &status, 0);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

}  // namespace ds::test
