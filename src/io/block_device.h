// The one interface all device and file I/O of diskseal goes through (after LevelDB's Env).
// Production code gets a BlockDevice from an Env; tests substitute memory devices and fault
// injectors (fault_device.h) so a crash, a torn write or EIO can be placed below any code.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <unistd.h>

#include "util/status.h"

namespace ds {

// The unit a block device's page cache reads and writes back in: a memory page (4096 bytes on
// x86-64, 64 KiB on some arm64 and ppc64 kernels).
inline uint64_t CachePageSize() { return uint64_t(::sysconf(_SC_PAGESIZE)); }

// A random-access byte device: an image file or a block device.
// Threading: ReadAt/WriteAt may be called concurrently from several threads on disjoint ranges;
// Sync may run concurrently with them and covers every write that completed before it started.
class BlockDevice {
 public:
  virtual ~BlockDevice() = default;

  // Reads exactly buf.size() bytes at `offset`. Reading past the end is an error (kIOError).
  virtual Status ReadAt(uint64_t offset, std::span<uint8_t> buf) = 0;
  // Writes all of buf at `offset`. Writing past the end is an error: devices do not grow.
  virtual Status WriteAt(uint64_t offset, std::span<const uint8_t> buf) = 0;
  // Durability barrier: every write completed before the call survives a power cut after it
  // returns ok. Commit points of the format and the engine call this, nothing else does.
  virtual Status Sync() = 0;
  // A hint, with no durability meaning: start writing [offset, offset+len) back to the medium now
  // rather than when the kernel gets round to it, so that the next Sync waits for less. Only
  // Sync makes anything durable; devices without a page cache ignore it.
  virtual void StartWriteback(uint64_t /*offset*/, uint64_t /*len*/) {}
  // Drops this device's cached pages of [offset, offset+len) that are clean, so that the next read
  // comes from the medium: needed when others write the medium through another device (a
  // device-mapper table over this one), whose writes this device's page cache never sees.
  // Precondition: this process's own writes there are synced. No effect without a page cache.
  // Every page touching the range is dropped, partial ones at its edges included.
  virtual void DropCache(uint64_t /*offset*/, uint64_t /*len*/) {}
  // ReadAt and WriteAt around this device's page cache (O_DIRECT), for I/O beside others who
  // reach the medium through another device (a device-mapper table over this one, see
  // DropCache): a read gets the medium's bytes, never a stale cached page; a write puts only its
  // own bytes on the medium, never the rest of a cached page that holds them, and cached pages
  // of the range are invalidated. Also the fast path in a guest whose disk emulation copies
  // every buffered page. Offset and size: multiples of the device's logical block size
  // (elsewhere, and on files that refuse O_DIRECT, whose cache every writer shares, a read drops
  // the range's cache first and a write is buffered); buffers aligned to a logical block (an
  // IoBuffer, or whole blocks inside one), else copied. Sync covers the writes as it covers
  // WriteAt. Devices without a page cache do plain ReadAt/WriteAt.
  virtual Status ReadAtUncached(uint64_t offset, std::span<uint8_t> buf) { return ReadAt(offset, buf); }
  virtual Status WriteAtUncached(uint64_t offset, std::span<const uint8_t> buf) { return WriteAt(offset, buf); }
  virtual uint64_t Size() const = 0;
  // The path or a label, for messages ("disk.img: ...").
  virtual const std::string& name() const = 0;
  virtual bool writable() const = 0;
  // Alignment O_DIRECT needs for offsets, lengths and buffers (1 when buffered).
  virtual uint32_t io_alignment() const { return 1; }
};

struct OpenOptions {
  bool write = false;      // open read-write; otherwise read-only (a write returns an error)
  bool exclusive = false;  // O_EXCL on block devices: fail with kBusy if mounted or held
  bool direct = false;     // try O_DIRECT, fall back to buffered where unsupported
};

// Files and devices as the operating system provides them. Stateless; thread-safe.
class Env {
 public:
  virtual ~Env() = default;
  virtual Result<std::unique_ptr<BlockDevice>> Open(const std::string& path,
                                                    const OpenOptions& opts) = 0;
  // Creates (or truncates) a regular file of `size` bytes, all zeros with the space reserved
  // (a full filesystem fails here, not at a later write), and opens it read-write. On failure
  // the file is removed.
  virtual Result<std::unique_ptr<BlockDevice>> Create(const std::string& path, uint64_t size,
                                                      unsigned mode = 0600) = 0;
  // Whole small files (key files, state files, certificates). max_size guards against reading a
  // device by mistake.
  virtual Result<std::string> ReadFile(const std::string& path, uint64_t max_size) = 0;
  // Write to a temp file beside `path`, fsync it, rename over `path`, fsync the directory:
  // after a crash the file holds either the old or the new contents, never a mix.
  virtual Status WriteFileAtomic(const std::string& path, std::string_view data,
                                 unsigned mode = 0600) = 0;
  // rename(2) then fsync of the directory: the new name is durable when this returns.
  virtual Status Rename(const std::string& from, const std::string& to) = 0;
  virtual bool Exists(const std::string& path) = 0;
  virtual Status Remove(const std::string& path) = 0;

  // The names in a directory, without "." and "..", in no particular order. For reading machine
  // state (/sys/class/block, /proc/PID/fd); kNotFound when the directory does not exist.
  virtual Result<std::vector<std::string>> ListDir(const std::string& path) = 0;
  // The target of a symbolic link as stored (not resolved): /proc/PID/fd/N, /sys/class/block/X.
  virtual Result<std::string> ReadLink(const std::string& path) = 0;
  // Space on the filesystem holding `path` (statvfs): what an unprivileged user may still use.
  struct FsSpace {
    uint64_t total_bytes = 0;
    uint64_t avail_bytes = 0;
    bool read_only = false;  // mounted read-only
  };
  virtual Result<FsSpace> StatFs(const std::string& path) = 0;
};

// The process-wide POSIX Env. Never null; lives for the whole program.
Env* PosixEnv();

}  // namespace ds
