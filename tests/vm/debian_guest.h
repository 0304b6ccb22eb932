// A full Debian 12 guest for the OS-volume boot tests: the image scripts/vm/debian-image builds
// (cached outside the checkout), booted in QEMU (TCG) with the kernel and initramfs read out of the
// image's own /boot before every boot, driven through a command channel instead of SSH.
//
// Command channel: the image's ds-agent.service reads the virtio-serial port org.diskseal.agent,
// which QEMU connects to a unix socket this class listens on (QEMU is the client, so the socket
// exists before the guest boots and nothing is lost). Lines, guest -> host:
//   "DSAGENT READY <boot_id>"                     once per boot, when the agent starts
//   "DSAGENT OUT <id> <base64 stdout+stderr>"     then "DSAGENT END <id> <exit status>" per command
// host -> guest: "RUN <id> <base64 of a bash script>". One command at a time.
//
// Every wait is on a marker (a line on the channel, QEMU's exit, a console string) and bounded by
// a timeout. Not thread-safe: one test drives one guest.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <map>
#include <string>
#include <vector>

namespace ds::test {

// A built image: ${DISKSEAL_IMAGE_CACHE:-/var/cache/diskseal-vm}/debian12-<variant>-<key>/.
struct DebianImage {
  std::string dir;
  std::string disk;                         // dir/disk.img: read-only, copy before booting
  std::map<std::string, std::string> env;   // dir/image.env (ROOT_ARG, BOOT_OFFSET, ...)
  double seconds = 0;                       // how long the build (or the cache look-up) took
};

// Builds the image of a variant (args for scripts/vm/debian-image, e.g. {"--root-fs", "xfs"} or
// {"--lvm"}) or reuses the cached one. Returns false with `err` set when it cannot.
bool PrepareDebianImage(const std::vector<std::string>& args, DebianImage* out, std::string* err);

// Copies `image.disk` to `dest` sparsely (each test boots its own copy).
bool CopyImage(const DebianImage& image, const std::string& dest, std::string* err);

// Runs `script` with bash on the host against `disk` (a copy of `image.disk`), with the image's
// geometry (ROOT_OFFSET, ROOT_SIZE, BOOT_OFFSET, BOOT_SIZE, ROOT_PARTUUID, BOOT_UUID, LVM), IMG=disk and
// `vars` (paths and names only) in its environment, `set -euo pipefail`, and two shell functions:
// `mount_image` (root at $m = $WORK/mnt with /boot below it; $rl/$bl are their loop devices; on
// an LVM image $rl is the root LV's place on the PV) and
// `chroot_mounts` (proc, sys and /dev inside $m). Everything is unmounted and detached at exit.
// Returns what bash printed and its exit status (testlib.h RunResult).
struct RunResult;
RunResult RunOnImage(const DebianImage& image, const std::string& disk,
                     const std::map<std::string, std::string>& vars, const std::string& script);

struct ExecResult {
  int exit_code = -1;   // the script's exit status; -1 when no answer came (timeout, guest gone)
  std::string output;   // stdout and stderr, interleaved
};

class DebianGuest {
 public:
  struct Options {
    std::string disk;                      // booted as /dev/vda
    std::vector<std::string> extra_disks;  // /dev/vdb, /dev/vdc, ...
    std::string root_arg;                  // the kernel's root= (image.env ROOT_ARG by default)
    std::string extra_cmdline;
    int vault_port = 0;   // > 0: user-mode network with restrict=on and one guestfwd rule:
                          // 10.0.2.100:8000 in the guest -> 127.0.0.1:vault_port on the host
    int mem_mib = 1024;
    std::string work_dir;  // console log, agent socket, extracted /boot files (must exist)
  };

  explicit DebianGuest(Options opts);  // starts a fresh console log in work_dir
  ~DebianGuest();  // cuts the power if the guest still runs
  DebianGuest(const DebianGuest&) = delete;
  DebianGuest& operator=(const DebianGuest&) = delete;

  // Reads vmlinuz and initrd.img out of the disk's /boot and starts QEMU; does not wait for the
  // guest (for tests that watch the console of a boot that cannot finish).
  bool PowerOn(std::string* err);
  // PowerOn, then waits for the agent's READY line (a new boot_id). False with `err` set (console tail included) on time-out or death.
  bool Boot(int timeout_s, std::string* err);
  // Runs `script` with bash in the guest; waits for its END line at most timeout_s.
  ExecResult Exec(const std::string& script, int timeout_s = 120);
  // `systemctl reboot` in the guest; QEMU runs with -no-reboot, so it exits at the reset; then
  // Boot() again, with the kernel and initramfs now in the disk's /boot.
  bool Reboot(int timeout_s, std::string* err);
  // `systemctl poweroff` and waits for QEMU to exit.
  bool Shutdown(int timeout_s, std::string* err);
  // Power cut: SIGKILL to QEMU. What the guest had not written to its disk is lost.
  void PowerCut();
  // Waits until the console (all boots so far) contains `marker`; false on time-out or QEMU exit.
  bool WaitConsole(const std::string& marker, int timeout_s);

  bool running() const { return pid_ > 0; }
  std::string Console() const;       // everything on the serial console since construction
  std::string ConsoleTail(size_t n = 4000) const;
  const std::string& boot_id() const { return boot_id_; }
  double last_boot_seconds() const { return last_boot_s_; }  // QEMU start -> agent READY

 private:
  using Clock = std::chrono::steady_clock;
  bool WaitExit(int timeout_s);
  // Prints "[guest +T s] what: D s" (T since construction, D since `since`).
  void LogTime(const std::string& what, Clock::time_point since) const;
  // Reads channel lines until one starts with `prefix` or the deadline passes; false on time-out
  // or when the channel closed (QEMU exited).
  bool ReadLine(const std::string& prefix, std::chrono::steady_clock::time_point deadline,
                std::string* line);
  void CloseChannel();

  Options o_;
  pid_t pid_ = -1;
  int listen_fd_ = -1, conn_fd_ = -1;
  std::string buf_;  // channel bytes not yet consumed
  std::string boot_id_;
  int next_id_ = 1;
  double last_boot_s_ = 0;
  Clock::time_point born_;
};

}  // namespace ds::test
