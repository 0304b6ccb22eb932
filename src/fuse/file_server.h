// The userspace view: serves one BlockDevice as a single regular file through FUSE, for machines
// whose kernel has no device-mapper (containers, rescue shells, these test hosts). The mount point
// is itself a regular file (/run/diskseal/NAME): FUSE allows a file root when the mount point is a
// file, so `losetup -f --show /run/diskseal/NAME` and `mount` work on it directly.
// No FUSE writeback cache: with it the kernel ignores the size the server reports for regular
// files and keeps the size of the root inode it made at mount time (0).
#pragma once

#include <memory>
#include <shared_mutex>
#include <string>

#include "io/block_device.h"
#include "util/status.h"

struct fuse_session;

namespace ds::fuse {

struct ServeOptions {
  std::string mountpoint;      // an existing regular file; becomes the plaintext file
  std::string fsname;          // shown in /proc/mounts as the source ("diskseal:NAME")
  bool read_only = false;
  unsigned max_threads = 8;    // FUSE worker threads serving requests concurrently
  // Writes not aligned to this many bytes are read-modify-writes of the device's sectors and are
  // serialised against every other request (the device's sector size; 512 for linear).
  uint32_t atomic_unit = 4096;
  // Transform large aligned requests (>= 512 KiB) in parallel pieces on helper threads, so one
  // sequential stream uses more than one core.
  bool split_large_requests = true;
};

// One mounted FUSE session over `dev`. Mount() mounts; Serve() answers requests until the file
// is unmounted (umount, or Stop() from a signal handler) and then syncs the device.
// Ownership: `dev` is borrowed and must outlive the server. Threading: Serve() blocks the calling
// thread and runs up to max_threads workers that call dev's ReadAt/WriteAt concurrently on
// disjoint ranges (overlapping unaligned writes are serialised here). Requires root or
// /dev/fuse access; mounting needs the fuse kernel module.
class FileServer {
 public:
  static Result<std::unique_ptr<FileServer>> Mount(BlockDevice* dev, const ServeOptions& opts);
  ~FileServer();  // unmounts if still mounted
  FileServer(const FileServer&) = delete;
  FileServer& operator=(const FileServer&) = delete;

  // Serves until unmounted or stopped, then flushes the device. Returns the first I/O error any
  // request met (each was also reported to the kernel as EIO), or the final Sync's error.
  Status Serve();
  // Makes SIGTERM/SIGINT/SIGHUP unmount the file (which ends Serve() after the kernel flushed
  // its cached writes). Blocks those signals and SIGUSR1 in the calling thread: call it before
  // Serve() and before starting other threads, from the thread that will call Serve().
  Status HandleSignals();

  // Implementation detail for the C callbacks in file_server.cc.
  struct Impl;

 private:
  explicit FileServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Checks that FUSE can be used here: /dev/fuse exists and the library loads. The message names
// the Debian package to install (fuse3) or the module to load.
Status CheckFuseAvailable();

}  // namespace ds::fuse
