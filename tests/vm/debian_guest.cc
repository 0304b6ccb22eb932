#include "debian_guest.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

#include "testlib.h"
#include "util/bytes.h"

namespace ds::test {

namespace {

using Clock = std::chrono::steady_clock;

std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ' || s.back() == '\r')) s.pop_back();
  return s;
}

std::string ReadAll(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// The script's first command, cut to 60 characters: names it in the time log. Skipped: blank
// lines, comments, `set -e`, `exec` redirections and shell function definitions (the helpers a
// test puts before its commands).
std::string FirstCommand(const std::string& script) {
  size_t pos = 0;
  bool in_function = false;
  while (pos < script.size()) {
    size_t end = script.find('\n', pos);
    if (end == std::string::npos) end = script.size();
    std::string line = Trim(script.substr(pos, end - pos));
    pos = end + 1;
    line.erase(0, std::min(line.find_first_not_of(' '), line.size()));
    if (in_function) {
      in_function = line != "}";
      continue;
    }
    if (line.find("() {") != std::string::npos) {
      in_function = line.back() != '}';  // a one-line function ends on its own line
      continue;
    }
    if (line.empty() || line[0] == '#' || line == "set -e" || line.rfind("exec ", 0) == 0) continue;
    return line.size() > 60 ? line.substr(0, 60) + "..." : line;
  }
  return "";
}

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

}  // namespace

bool PrepareDebianImage(const std::vector<std::string>& args, DebianImage* out, std::string* err) {
  auto t0 = Clock::now();
  std::vector<std::string> argv = {std::string(DISKSEAL_SOURCE_DIR) + "/scripts/vm/debian-image"};
  argv.insert(argv.end(), args.begin(), args.end());
  RunResult r = Run(argv);
  out->seconds = Seconds(t0, Clock::now());
  if (r.exit_code != 0) {
    *err = "scripts/vm/debian-image failed (" + std::to_string(r.exit_code) + "): " + r.err;
    return false;
  }
  std::string dir = Trim(r.out);
  if (auto nl = dir.rfind('\n'); nl != std::string::npos) dir = dir.substr(nl + 1);
  out->dir = dir;
  out->disk = dir + "/disk.img";
  std::istringstream env(ReadAll(dir + "/image.env"));
  for (std::string line; std::getline(env, line);) {
    auto eq = line.find('=');
    if (eq != std::string::npos) out->env[line.substr(0, eq)] = line.substr(eq + 1);
  }
  if (out->env.count("ROOT_ARG") == 0) {
    *err = dir + "/image.env has no ROOT_ARG";
    return false;
  }
  return true;
}

bool CopyImage(const DebianImage& image, const std::string& dest, std::string* err) {
  RunResult r = Run({"cp", "--sparse=always", image.disk, dest});
  if (r.exit_code != 0) *err = "cp " + image.disk + " " + dest + ": " + r.err;
  return r.exit_code == 0;
}

namespace {

const char kImageShell[] = R"SH(
set -euo pipefail
loops=() mounts=()
cleanup() {
  local i
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount "${mounts[i]}" 2>/dev/null || umount -l "${mounts[i]}" || true; done
  for i in "${loops[@]}"; do losetup -d "$i" 2>/dev/null || true; done
}
trap cleanup EXIT
mount_image() {
  rl=$(losetup -f --show -o "$ROOT_OFFSET" --sizelimit "$ROOT_SIZE" "$IMG"); loops+=("$rl")
  if [ "${LVM:-0}" = 1 ]; then
    # Root is the LV dsvg/root, one linear segment from the PV's first extent (as the image
    # script made it): reached through a loop device at its place (no device-mapper here).
    local opt=(--devices "$rl" --driverloaded n --noheadings --units b --nosuffix)
    local pe lv
    pe=$(LVM_SUPPRESS_FD_WARNINGS=1 pvs "${opt[@]}" -o pe_start "$rl" 2>/dev/null | tr -d ' ')
    lv=$(LVM_SUPPRESS_FD_WARNINGS=1 lvs "${opt[@]}" -o lv_size dsvg/root 2>/dev/null | tr -d ' ')
    [ -n "$pe" ] && [ -n "$lv" ] || { echo "mount_image: no dsvg/root on the root partition"; return 1; }
    rl=$(losetup -f --show -o $((ROOT_OFFSET + pe)) --sizelimit "$lv" "$IMG"); loops+=("$rl")
  fi
  bl=$(losetup -f --show -o "$BOOT_OFFSET" --sizelimit "$BOOT_SIZE" "$IMG"); loops+=("$bl")
  m="$WORK/mnt"
  mkdir -p "$m"
  mount "$rl" "$m"; mounts+=("$m")
  mount "$bl" "$m/boot"; mounts+=("$m/boot")
}
chroot_mounts() {
  mount -t proc proc "$m/proc"; mounts+=("$m/proc")
  mount -t sysfs sysfs "$m/sys"; mounts+=("$m/sys")
  mount --bind /dev "$m/dev"; mounts+=("$m/dev")
}
)SH";

}  // namespace

RunResult RunOnImage(const DebianImage& image, const std::string& disk,
                     const std::map<std::string, std::string>& vars, const std::string& script) {
  std::vector<std::string> argv = {"env"};
  for (const char* k : {"ROOT_OFFSET", "ROOT_SIZE", "BOOT_OFFSET", "BOOT_SIZE", "ROOT_PARTUUID", "BOOT_UUID", "LVM"}) {
    auto it = image.env.find(k);
    argv.push_back(std::string(k) + "=" + (it == image.env.end() ? "" : it->second));
  }
  argv.push_back("IMG=" + disk);
  for (const auto& [k, v] : vars) argv.push_back(k + "=" + v);
  for (const char* a : {"bash", "-c"}) argv.push_back(a);
  argv.push_back(std::string(kImageShell) + script);
  const auto t0 = Clock::now();
  RunResult r = RunProgram(argv);
  std::printf("[host] on the image (%s): %.1f s\n", FirstCommand(script).c_str(), Seconds(t0, Clock::now()));
  std::fflush(stdout);
  return r;
}

DebianGuest::DebianGuest(Options opts) : o_(std::move(opts)), born_(Clock::now()) {
  ::unlink((o_.work_dir + "/console.log").c_str());
}

void DebianGuest::LogTime(const std::string& what, Clock::time_point since) const {
  // Where a guest test spends its time, in the test's output (CI shows it when a test fails): the
  // OS tests are most of the suite's time under TCG.
  std::printf("[guest +%5.0fs] %s: %.1f s\n", Seconds(born_, Clock::now()), what.c_str(), Seconds(since, Clock::now()));
  std::fflush(stdout);
}

DebianGuest::~DebianGuest() {
  if (pid_ > 0) PowerCut();
  CloseChannel();
}

void DebianGuest::CloseChannel() {
  if (conn_fd_ >= 0) ::close(conn_fd_);
  if (listen_fd_ >= 0) ::close(listen_fd_);
  conn_fd_ = listen_fd_ = -1;
  buf_.clear();
}

std::string DebianGuest::Console() const {
  std::string c = ReadAll(o_.work_dir + "/console.log");
  std::string out;
  out.reserve(c.size());
  for (char ch : c)
    if (ch != '\r') out.push_back(ch);
  return out;
}

std::string DebianGuest::ConsoleTail(size_t n) const {
  std::string c = Console();
  return c.size() > n ? c.substr(c.size() - n) : c;
}

bool DebianGuest::PowerOn(std::string* err) {
  const std::string boot_dir = o_.work_dir + "/boot";
  RunResult bf = Run({std::string(DISKSEAL_SOURCE_DIR) + "/scripts/vm/debian-image", "--boot-files",
                      o_.disk, boot_dir});
  if (bf.exit_code != 0) {
    *err = "reading /boot out of " + o_.disk + ": " + bf.err;
    return false;
  }
  CloseChannel();
  const std::string sock = o_.work_dir + "/agent.sock";
  ::unlink(sock.c_str());
  listen_fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  if (sock.size() >= sizeof(sa.sun_path)) {
    *err = "agent socket path too long: " + sock;
    return false;
  }
  std::strcpy(sa.sun_path, sock.c_str());
  if (listen_fd_ < 0 || ::bind(listen_fd_, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0 ||
      ::listen(listen_fd_, 1) != 0) {
    *err = "agent socket " + sock + ": " + std::strerror(errno);
    return false;
  }

  std::string cmdline = "root=" + o_.root_arg + " ro console=ttyS0 panic=-1 loglevel=4";
  if (!o_.extra_cmdline.empty()) cmdline += " " + o_.extra_cmdline;
  // avx2=off: an emulation artifact otherwise slows every userspace cipher several times
  // (scripts/vm/run says why); the guest still has AES-NI and AVX.
  std::vector<std::string> argv = {
      "qemu-system-x86_64", "-nodefaults", "-display", "none", "-no-reboot", "-machine", "q35",
      "-cpu", "max,avx2=off", "-m", std::to_string(o_.mem_mib), "-smp", "1", "-monitor", "none",
      "-chardev", "file,id=con,append=on,path=" + o_.work_dir + "/console.log", "-serial", "chardev:con",
      "-kernel", boot_dir + "/vmlinuz", "-initrd", boot_dir + "/initrd.img", "-append", cmdline,
      "-device", "virtio-serial-pci", "-chardev", "socket,id=agent,path=" + sock,
      "-device", "virtserialport,chardev=agent,name=org.diskseal.agent"};
  // cache=unsafe: guest flushes are not forwarded, but every write QEMU did is in the host's page
  // cache, so killing QEMU (the power cut) loses exactly what the guest had not written yet.
  std::vector<std::string> disks = {o_.disk};
  disks.insert(disks.end(), o_.extra_disks.begin(), o_.extra_disks.end());
  for (const auto& d : disks) argv.insert(argv.end(), {"-drive", "file=" + d + ",format=raw,if=virtio,cache=unsafe"});
  if (o_.vault_port > 0) {
    argv.insert(argv.end(),
                {"-netdev",
                 "user,id=n0,restrict=on,guestfwd=tcp:10.0.2.100:8000-cmd:socat - TCP:127.0.0.1:" +
                     std::to_string(o_.vault_port),
                 "-device", "virtio-net-pci,netdev=n0"});
  }

  const std::string qlog = o_.work_dir + "/qemu.log";
  pid_t pid = ::fork();
  if (pid < 0) {
    *err = std::string("fork: ") + std::strerror(errno);
    return false;
  }
  if (pid == 0) {
    int in = ::open("/dev/null", O_RDONLY);
    int lg = ::open(qlog.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (in >= 0) ::dup2(in, 0);
    if (lg >= 0) {
      ::dup2(lg, 1);
      ::dup2(lg, 2);
    }
    std::vector<char*> cargv;
    for (auto& a : argv) cargv.push_back(a.data());
    cargv.push_back(nullptr);
    ::execvp(cargv[0], cargv.data());
    ::_exit(127);
  }
  pid_ = pid;
  // QEMU connects to the socket while it starts, before the guest runs.
  pollfd p{listen_fd_, POLLIN, 0};
  if (::poll(&p, 1, 30000) != 1) {
    PowerCut();
    *err = "QEMU did not connect to the agent socket within 30 s: " + ReadAll(qlog);
    return false;
  }
  conn_fd_ = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
  if (conn_fd_ < 0) {
    PowerCut();
    *err = std::string("accept: ") + std::strerror(errno);
    return false;
  }
  return true;
}

bool DebianGuest::ReadLine(const std::string& prefix, Clock::time_point deadline, std::string* line) {
  for (;;) {
    for (size_t nl; (nl = buf_.find('\n')) != std::string::npos;) {
      std::string l = buf_.substr(0, nl);
      buf_.erase(0, nl + 1);
      if (l.rfind(prefix, 0) == 0) {
        *line = l;
        return true;
      }
    }
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0 || conn_fd_ < 0) return false;
    pollfd p{conn_fd_, POLLIN, 0};
    int n = ::poll(&p, 1, static_cast<int>(std::min<long long>(left, 1000)));
    if (n < 0 && errno != EINTR) return false;
    if (n <= 0) continue;
    char b[65536];
    ssize_t got = ::read(conn_fd_, b, sizeof(b));
    if (got <= 0) return false;  // QEMU closed the socket: it exited
    buf_.append(b, static_cast<size_t>(got));
  }
}

bool DebianGuest::Boot(int timeout_s, std::string* err) {
  auto t0 = Clock::now();
  if (!PowerOn(err)) return false;
  std::string line;
  if (!ReadLine("DSAGENT READY ", t0 + std::chrono::seconds(timeout_s), &line)) {
    *err = "the guest did not become ready within " + std::to_string(timeout_s) + " s; console:\n" +
           ConsoleTail();
    PowerCut();
    return false;
  }
  boot_id_ = line.substr(std::strlen("DSAGENT READY "));
  last_boot_s_ = Seconds(t0, Clock::now());
  LogTime("boot", t0);
  return true;
}

ExecResult DebianGuest::Exec(const std::string& script, int timeout_s) {
  ExecResult res;
  if (conn_fd_ < 0) {
    res.output = "guest not running";
    return res;
  }
  const std::string id = std::to_string(next_id_++);
  std::string msg = "RUN " + id + " " +
                    Base64Encode({reinterpret_cast<const uint8_t*>(script.data()), script.size()}) + "\n";
  for (size_t off = 0; off < msg.size();) {
    ssize_t w = ::write(conn_fd_, msg.data() + off, msg.size() - off);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      res.output = std::string("writing to the agent: ") + std::strerror(errno);
      return res;
    }
    off += static_cast<size_t>(w);
  }
  const auto t0 = Clock::now();
  auto deadline = t0 + std::chrono::seconds(timeout_s);
  std::string line;
  const std::string out_prefix = "DSAGENT OUT " + id + " ", end_prefix = "DSAGENT END " + id + " ";
  if (!ReadLine(out_prefix, deadline, &line)) {
    res.output = "no answer from the guest within " + std::to_string(timeout_s) + " s; console:\n" + ConsoleTail();
    return res;
  }
  auto dec = Base64Decode(line.substr(out_prefix.size()));
  if (dec) res.output.assign(dec->begin(), dec->end());
  if (!ReadLine(end_prefix, deadline, &line)) return res;
  res.exit_code = std::atoi(line.substr(end_prefix.size()).c_str());
  LogTime("exec " + id + " (" + FirstCommand(script) + ")", t0);
  return res;
}

bool DebianGuest::WaitExit(int timeout_s) {
  if (pid_ <= 0) return true;
  auto deadline = Clock::now() + std::chrono::seconds(timeout_s);
  // The channel closes when QEMU exits: wait on it, then reap.
  std::string ignored;
  while (ReadLine("\x01never", deadline, &ignored)) {
  }
  for (;;) {
    int st = 0;
    pid_t r = ::waitpid(pid_, &st, WNOHANG);
    if (r == pid_ || (r < 0 && errno == ECHILD)) {
      pid_ = -1;
      return true;
    }
    if (Clock::now() >= deadline) return false;
    // The socket is closed but QEMU is still tearing down: short waits, bounded by the deadline.
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

bool DebianGuest::Shutdown(int timeout_s, std::string* err) {
  Exec("systemd-run --no-block systemctl poweroff", 30);
  if (!WaitExit(timeout_s)) {
    *err = "the guest did not power off within " + std::to_string(timeout_s) + " s; console:\n" + ConsoleTail();
    PowerCut();
    return false;
  }
  CloseChannel();
  return true;
}

bool DebianGuest::Reboot(int timeout_s, std::string* err) {
  auto t0 = Clock::now();
  Exec("systemd-run --no-block systemctl reboot", 30);
  if (!WaitExit(timeout_s)) {
    *err = "the guest did not go down for the reboot within " + std::to_string(timeout_s) +
           " s; console:\n" + ConsoleTail();
    PowerCut();
    return false;
  }
  const std::string old_boot = boot_id_;
  int left = timeout_s - static_cast<int>(Seconds(t0, Clock::now()));
  if (!Boot(left > 30 ? left : 30, err)) return false;
  if (boot_id_ == old_boot) {
    *err = "the guest came back with the same boot_id " + boot_id_;
    return false;
  }
  return true;
}

void DebianGuest::PowerCut() {
  if (pid_ > 0) {
    ::kill(pid_, SIGKILL);
    int st = 0;
    ::waitpid(pid_, &st, 0);
    pid_ = -1;
  }
  CloseChannel();
}

bool DebianGuest::WaitConsole(const std::string& marker, int timeout_s) {
  auto deadline = Clock::now() + std::chrono::seconds(timeout_s);
  for (;;) {
    if (Console().find(marker) != std::string::npos) return true;
    if (Clock::now() >= deadline) return false;
    if (pid_ > 0 && ::waitpid(pid_, nullptr, WNOHANG) == pid_) {
      pid_ = -1;
      return Console().find(marker) != std::string::npos;
    }
    // The console is a file QEMU appends to: look again shortly, bounded by the deadline.
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

}  // namespace ds::test
