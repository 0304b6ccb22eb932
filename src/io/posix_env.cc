#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <dirent.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <mutex>
#include <string>

#include "io/block_device.h"
#include "io/io_buffer.h"

namespace ds {

namespace {

class PosixDevice final : public BlockDevice {
 public:
  PosixDevice(int fd, std::string name, uint64_t size, bool writable, uint32_t align)
      : fd_(fd), name_(std::move(name)), size_(size), writable_(writable), align_(align) {}
  ~PosixDevice() override {
    ::close(fd_);
    if (dfd_ >= 0) ::close(dfd_);
  }

  Status ReadAt(uint64_t offset, std::span<uint8_t> buf) override {
    if (offset > size_ || buf.size() > size_ - offset)
      return IOError(name_ + ": read of " + std::to_string(buf.size()) + " bytes at " +
                     std::to_string(offset) + " is beyond the end (" + std::to_string(size_) +
                     " bytes)");
    size_t done = 0;
    while (done < buf.size()) {
      ssize_t n = ::pread(fd_, buf.data() + done, buf.size() - done, off_t(offset + done));
      if (n < 0) {
        if (errno == EINTR) continue;
        return PosixError(name_ + ": read at " + std::to_string(offset + done), errno);
      }
      if (n == 0) return IOError(name_ + ": unexpected end of device at " +
                                 std::to_string(offset + done));
      done += size_t(n);
    }
    return Status::Ok();
  }

  Status WriteAt(uint64_t offset, std::span<const uint8_t> buf) override {
    if (!writable_) return IOError(name_ + ": opened read-only");
    if (offset > size_ || buf.size() > size_ - offset)
      return IOError(name_ + ": write at " + std::to_string(offset) + " is beyond the end");
    size_t done = 0;
    while (done < buf.size()) {
      ssize_t n = ::pwrite(fd_, buf.data() + done, buf.size() - done, off_t(offset + done));
      if (n < 0) {
        if (errno == EINTR) continue;
        return PosixError(name_ + ": write at " + std::to_string(offset + done), errno);
      }
      done += size_t(n);
    }
    return Status::Ok();
  }

  Status Sync() override {
    if (!writable_) return Status::Ok();
    if (::fdatasync(fd_) != 0) return PosixError(name_ + ": fdatasync", errno);
    return Status::Ok();
  }

  void StartWriteback(uint64_t offset, uint64_t len) override {
    // Best effort: an error here is reported by the Sync that follows.
    if (writable_) (void)::sync_file_range(fd_, off_t(offset), off_t(len), SYNC_FILE_RANGE_WRITE);
  }

  void DropCache(uint64_t offset, uint64_t len) override {
    // POSIX_FADV_DONTNEED on a block device invalidates the clean pages of its page cache in the
    // range (the bdev inode's mapping); dirty ones stay, which the precondition excludes. The
    // kernel drops only pages wholly inside the range: widened to whole pages here, as a page
    // that holds the range's first or last bytes would otherwise still be read from the cache.
    const uint64_t page = CachePageSize();
    const uint64_t from = offset / page * page, to = (offset + len + page - 1) / page * page;
    (void)::posix_fadvise(fd_, off_t(from), off_t(to - from), POSIX_FADV_DONTNEED);
  }

  Status ReadAtUncached(uint64_t offset, std::span<uint8_t> buf) override {
    if (offset > size_ || buf.size() > size_ - offset)
      return IOError(name_ + ": read of " + std::to_string(buf.size()) + " bytes at " +
                     std::to_string(offset) + " is beyond the end (" + std::to_string(size_) + " bytes)");
    const int fd = DirectFd(offset, buf.size());
    if (fd < 0) {  // no O_DIRECT here, or not whole blocks: the medium's bytes through the cache
      DropCache(offset, buf.size());
      return ReadAt(offset, buf);
    }
    if (reinterpret_cast<uintptr_t>(buf.data()) % direct_unit_ != 0) {  // see WriteAtUncached
      IoBuffer copy(buf.size());
      DS_RETURN_IF_ERROR(Direct(fd, offset, copy.data(), buf.size(), false));
      std::memcpy(buf.data(), copy.data(), buf.size());
      return Status::Ok();
    }
    return Direct(fd, offset, buf.data(), buf.size(), false);
  }

  Status WriteAtUncached(uint64_t offset, std::span<const uint8_t> buf) override {
    if (!writable_) return IOError(name_ + ": opened read-only");
    if (offset > size_ || buf.size() > size_ - offset)
      return IOError(name_ + ": write at " + std::to_string(offset) + " is beyond the end");
    const int fd = DirectFd(offset, buf.size());
    if (fd < 0) return WriteAt(offset, buf);  // no O_DIRECT here: a cache every writer shares
    // The kernel wants the memory of a direct transfer aligned as its offsets (a logical
    // block): the engine's IoBuffers and whole blocks inside them are; anything else goes
    // through an aligned copy.
    if (reinterpret_cast<uintptr_t>(buf.data()) % direct_unit_ != 0) {
      IoBuffer copy(buf.size());
      std::memcpy(copy.data(), buf.data(), buf.size());
      return Direct(fd, offset, copy.data(), buf.size(), true);
    }
    return Direct(fd, offset, const_cast<uint8_t*>(buf.data()), buf.size(), true);
  }

  uint64_t Size() const override { return size_; }
  const std::string& name() const override { return name_; }
  bool writable() const override { return writable_; }
  uint32_t io_alignment() const override { return align_; }

 private:
  // The O_DIRECT twin of fd_ for [offset, +len), or -1 where the transfer must be buffered: the
  // file refuses O_DIRECT (tmpfs: there every writer shares the one cache anyway) or the range
  // is not whole logical blocks. Opened once, on first use, through /proc/self/fd: a second
  // open file of the same inode, whose page cache is fd_'s (O_DIRECT is a property of the open
  // file, and fd_ stays buffered for everything else). Thread-safe.
  int DirectFd(uint64_t offset, uint64_t len) {
    std::call_once(direct_once_, [this] {
      const std::string self = "/proc/self/fd/" + std::to_string(fd_);
      dfd_ = ::open(self.c_str(), (writable_ ? O_RDWR : O_RDONLY) | O_DIRECT | O_CLOEXEC);
      int unit = 0;
      struct stat st;
      if (dfd_ >= 0 && ::fstat(dfd_, &st) == 0)
        direct_unit_ = S_ISBLK(st.st_mode) && ::ioctl(dfd_, BLKSSZGET, &unit) == 0 && unit > 0
                           ? uint64_t(unit)
                           : uint64_t(IoBuffer::kAlign);
    });
    if (dfd_ < 0 || offset % direct_unit_ != 0 || len % direct_unit_ != 0) return -1;
    return dfd_;
  }

  // One direct transfer of whole blocks from or to a block-aligned buffer; short transfers are
  // continued (they end on block boundaries).
  Status Direct(int fd, uint64_t offset, uint8_t* p, size_t n, bool write) {
    size_t done = 0;
    while (done < n) {
      const ssize_t r = write ? ::pwrite(fd, p + done, n - done, off_t(offset + done))
                              : ::pread(fd, p + done, n - done, off_t(offset + done));
      if (r < 0) {
        if (errno == EINTR) continue;
        return PosixError(name_ + ": direct " + (write ? "write" : "read") + " at " +
                              std::to_string(offset + done), errno);
      }
      if (r == 0) return IOError(name_ + ": unexpected end of device at " + std::to_string(offset + done));
      done += size_t(r);
    }
    return Status::Ok();
  }

  int fd_;
  std::string name_;
  uint64_t size_;
  bool writable_;
  uint32_t align_;
  std::once_flag direct_once_;
  int dfd_ = -1;
  uint64_t direct_unit_ = IoBuffer::kAlign;
};

Result<std::unique_ptr<BlockDevice>> OpenFd(const std::string& path, int flags, bool writable) {
  int fd = ::open(path.c_str(), flags | O_CLOEXEC);
  if (fd < 0 && (flags & O_DIRECT) && errno == EINVAL) {
    flags &= ~O_DIRECT;  // tmpfs and some filesystems refuse O_DIRECT: buffered is correct too
    fd = ::open(path.c_str(), flags | O_CLOEXEC);
  }
  if (fd < 0) {
    if (errno == EBUSY)
      return Busy(path + ": device is in use (mounted, open or held by another program)");
    return PosixError(path, errno);
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    int e = errno;
    ::close(fd);
    return PosixError(path, e);
  }
  uint64_t size = 0;
  uint32_t align = 1;
  if (S_ISBLK(st.st_mode)) {
    if (ioctl(fd, BLKGETSIZE64, &size) != 0) {
      int e = errno;
      ::close(fd);
      return PosixError(path + ": BLKGETSIZE64", e);
    }
  } else if (S_ISREG(st.st_mode)) {
    size = uint64_t(st.st_size);
  } else {
    ::close(fd);
    return InvalidArgument(path + ": not a regular file or block device");
  }
  if (flags & O_DIRECT) align = 4096;
  return std::unique_ptr<BlockDevice>(new PosixDevice(fd, path, size, writable, align));
}

class PosixEnvImpl final : public Env {
 public:
  Result<std::unique_ptr<BlockDevice>> Open(const std::string& path,
                                            const OpenOptions& opts) override {
    int flags = opts.write ? O_RDWR : O_RDONLY;
    if (opts.direct) flags |= O_DIRECT;
    if (opts.exclusive) {
      struct stat st;
      if (::stat(path.c_str(), &st) == 0 && S_ISBLK(st.st_mode)) flags |= O_EXCL;
    }
    return OpenFd(path, flags, opts.write);
  }

  Result<std::unique_ptr<BlockDevice>> Create(const std::string& path, uint64_t size,
                                              unsigned mode) override {
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    if (fd < 0) return PosixError(path, errno);
    // Reserved, not written: reads as zeros, and a full filesystem says so now (ENOSPC) rather
    // than in the middle of a later write. Filesystems without fallocate get a sparse file.
    int e = size ? ::posix_fallocate(fd, 0, off_t(size)) : 0;
    if (e == EOPNOTSUPP || e == EINVAL) e = ::ftruncate(fd, off_t(size)) == 0 ? 0 : errno;
    if (e != 0) {
      ::close(fd);
      (void)::unlink(path.c_str());
      return PosixError(path + ": reserve " + std::to_string(size) + " bytes", e);
    }
    ::close(fd);
    return OpenFd(path, O_RDWR, true);
  }

  Result<std::string> ReadFile(const std::string& path, uint64_t max_size) override {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return PosixError(path, errno);
    std::string out;
    char buf[65536];
    for (;;) {
      ssize_t n = ::read(fd, buf, sizeof buf);
      if (n < 0) {
        if (errno == EINTR) continue;
        int e = errno;
        ::close(fd);
        return PosixError(path, e);
      }
      if (n == 0) break;
      if (out.size() + size_t(n) > max_size) {
        ::close(fd);
        return InvalidArgument(path + ": larger than " + std::to_string(max_size) + " bytes");
      }
      out.append(buf, size_t(n));
    }
    ::close(fd);
    return out;
  }

  Status WriteFileAtomic(const std::string& path, std::string_view data, unsigned mode) override {
    std::string tmp = path + ".tmp-" + std::to_string(::getpid());
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    if (fd < 0) return PosixError(tmp, errno);
    size_t done = 0;
    while (done < data.size()) {
      ssize_t n = ::write(fd, data.data() + done, data.size() - done);
      if (n < 0) {
        if (errno == EINTR) continue;
        int e = errno;
        ::close(fd);
        ::unlink(tmp.c_str());
        return PosixError(tmp, e);
      }
      done += size_t(n);
    }
    if (::fsync(fd) != 0) {
      int e = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      return PosixError(tmp + ": fsync", e);
    }
    ::close(fd);
    Status s = Rename(tmp, path);
    if (!s.ok()) ::unlink(tmp.c_str());
    return s;
  }

  Status Rename(const std::string& from, const std::string& to) override {
    if (::rename(from.c_str(), to.c_str()) != 0) return PosixError(to, errno);
    std::string dir = to.find('/') == std::string::npos ? "." : to.substr(0, to.rfind('/'));
    if (dir.empty()) dir = "/";
    int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) return PosixError(dir, errno);
    int rc = ::fsync(dfd);  // make the rename itself durable
    int e = errno;
    ::close(dfd);
    if (rc != 0) return PosixError(dir + ": fsync", e);
    return Status::Ok();
  }

  bool Exists(const std::string& path) override { return ::access(path.c_str(), F_OK) == 0; }

  Status Remove(const std::string& path) override {
    if (::unlink(path.c_str()) != 0) return PosixError(path, errno);
    return Status::Ok();
  }

  Result<std::vector<std::string>> ListDir(const std::string& path) override {
    DIR* d = ::opendir(path.c_str());
    if (!d) return PosixError(path, errno);
    std::vector<std::string> names;
    errno = 0;
    while (dirent* e = ::readdir(d)) {
      if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0)
        names.emplace_back(e->d_name);
      errno = 0;
    }
    int e = errno;  // readdir returns null at the end (errno untouched) or on error
    ::closedir(d);
    if (e != 0) return PosixError(path, e);
    return names;
  }

  Result<std::string> ReadLink(const std::string& path) override {
    char buf[4096];
    ssize_t n = ::readlink(path.c_str(), buf, sizeof buf);
    if (n < 0) return PosixError(path, errno);
    if (size_t(n) == sizeof buf) return InvalidArgument(path + ": link target too long");
    return std::string(buf, size_t(n));
  }

  Result<FsSpace> StatFs(const std::string& path) override {
    struct statvfs st;
    if (::statvfs(path.c_str(), &st) != 0) return PosixError(path, errno);
    FsSpace s;
    s.total_bytes = uint64_t(st.f_blocks) * st.f_frsize;
    s.avail_bytes = uint64_t(st.f_bavail) * st.f_frsize;
    s.read_only = (st.f_flag & ST_RDONLY) != 0;
    return s;
  }
};

}  // namespace

Env* PosixEnv() {
  static PosixEnvImpl env;
  return &env;
}

}  // namespace ds
