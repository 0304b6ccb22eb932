// Helpers for tests that run the real vault server (`diskseal vault serve`) as a process on
// loopback: start it in the background on a free port, make tokens, stop or kill it.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "testlib.h"
#include "vault/client.h"

extern char** environ;

namespace ds::test {

class VaultProcess {
 public:
  // `dir` is the vault's data directory (created by the server if missing).
  explicit VaultProcess(std::string dir) : dir_(std::move(dir)) {}
  ~VaultProcess() {
    if (pid_ > 0) Stop(SIGKILL);
  }
  VaultProcess(const VaultProcess&) = delete;
  VaultProcess& operator=(const VaultProcess&) = delete;

  // Starts the server and waits until it has bound its port (it writes the port file after
  // listen(), so connections from then on are accepted). Throws on failure, with the log.
  void Start() {
    std::string port_file = dir_ + ".port";
    ::unlink(port_file.c_str());
    std::vector<std::string> argv{DISKSEAL_BIN, "vault", "serve", "--dir", dir_, "--listen",
                                  "127.0.0.1:0", "--port-file", port_file, "--threads", "16"};
    argv.insert(argv.end(), extra_args_.begin(), extra_args_.end());
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, log().c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    int rc = posix_spawn(&pid_, args[0], &fa, nullptr, args.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) throw std::runtime_error("spawn vault server failed");
    // A generous deadline only bounds a broken start; a healthy one takes milliseconds.
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (std::chrono::steady_clock::now() < deadline) {
      int status;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        throw std::runtime_error("vault server exited at start: " + ReadLog());
      }
      if (::access(port_file.c_str(), R_OK) == 0) {
        port_ = std::stoi(ReadFileOrDie(port_file));
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    throw std::runtime_error("vault server did not start: " + ReadLog());
  }

  // Options added to `vault serve` by the next Start() (limits, timeouts).
  void SetExtraArgs(std::vector<std::string> args) { extra_args_ = std::move(args); }

  // Sends `sig` and waits; returns the exit code (128+N when killed by signal N).
  int Stop(int sig = SIGTERM) {
    if (pid_ <= 0) return -1;
    ::kill(pid_, sig);
    int status = 0;
    waitpid(pid_, &status, 0);
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  bool Alive() const { return pid_ > 0 && ::kill(pid_, 0) == 0; }

  int port() const { return port_; }
  pid_t pid() const { return pid_; }
  std::string url() const { return "https://127.0.0.1:" + std::to_string(port_); }
  std::string ca() const { return dir_ + "/ca.pem"; }
  const std::string& dir() const { return dir_; }
  std::string log() const { return dir_ + ".log"; }
  std::string ReadLog() const {
    try {
      return ReadFileOrDie(log());
    } catch (...) {
      return "";
    }
  }

  // A token with `perms` ("all" or "secrets:get,..."), written to a file; returns the path.
  std::string Token(const std::string& name, const std::string& perms) const {
    std::string file = dir_ + "." + name + ".token";
    RunResult r = Diskseal({"vault", "token", "create", "--dir", dir_, "--name", name, "--allow",
                            perms, "--out", file});
    if (r.exit_code != 0) throw std::runtime_error("token create: " + r.err);
    return file;
  }

  vault::VaultClientOptions ClientOptions(const std::string& token_file) const {
    vault::VaultClientOptions o;
    o.url = url();
    o.token_file = token_file;
    o.ca_file = ca();
    o.timeout_ms = 60000;
    return o;
  }

 private:
  std::string dir_;
  std::vector<std::string> extra_args_;
  pid_t pid_ = -1;
  int port_ = 0;
};

// A client of the server `v` with the token in `token_file`; throws when it cannot be made.
inline std::unique_ptr<vault::VaultClient> Client(const VaultProcess& v, const std::string& token_file) {
  auto c = vault::VaultClient::Create(*PosixEnv(), v.ClientOptions(token_file));
  if (!c.ok()) throw std::runtime_error(c.status().message());
  return std::move(*c);
}

// A reply's body as JSON (discarded when it is not JSON).
inline nlohmann::json Body(const vault::HttpReply& r) { return nlohmann::json::parse(r.body, nullptr, false); }

}  // namespace ds::test
