#include "cli/key_input.h"

#include <termios.h>
#include <unistd.h>
#include <fcntl.h>

#include <algorithm>
#include <cstring>

namespace ds::cli {

namespace {
constexpr uint64_t kMaxKeyFile = 8u << 20;  // cryptsetup's default keyfile size limit

Result<SecureBuffer> ReadAllFd(int fd, uint64_t max, bool one_line) {
  SecureBuffer buf(max);
  size_t n = 0;
  while (n < max) {
    ssize_t k = ::read(fd, buf.data() + n, one_line ? 1 : max - n);
    if (k < 0) {
      if (errno == EINTR) continue;
      return PosixError("reading key", errno);
    }
    if (k == 0) break;
    if (one_line && buf.data()[n] == '\n') break;
    n += size_t(k);
  }
  buf.Truncate(n);
  return buf;
}

Result<SecureBuffer> Prompt(const std::string& prompt) {
  int fd = ::open("/dev/tty", O_RDWR | O_CLOEXEC);
  if (fd < 0) return InvalidArgument("no key given: use --key-file, stdin, or a terminal");
  struct termios old, quiet;
  tcgetattr(fd, &old);
  quiet = old;
  quiet.c_lflag &= ~tcflag_t(ECHO);
  // Echo off before the prompt shows: what is typed once it is visible is kept, not flushed.
  tcsetattr(fd, TCSAFLUSH, &quiet);
  (void)!::write(fd, prompt.data(), prompt.size());
  auto r = ReadAllFd(fd, 512, true);
  tcsetattr(fd, TCSAFLUSH, &old);
  (void)!::write(fd, "\n", 1);
  ::close(fd);
  return r;
}
}  // namespace

void AddKeyOptions(CLI::App& app, KeySource& src, const std::string& prefix) {
  if (prefix.empty()) {
    app.add_option("-d,--key-file", src.key_file, "read the passphrase from this file (- for stdin)");
    app.add_option("--keyfile-offset", src.keyfile_offset, "skip this many bytes of the key file");
    app.add_option("-l,--keyfile-size", src.keyfile_size, "read at most this many bytes of the key file");
    app.add_flag("-y,--verify-passphrase", src.verify, "on a terminal, ask for the passphrase twice");
    app.add_option("-T,--tries", src.tries, "passphrases to try at a terminal (default 3)")
        ->check(CLI::Range(1u, 1000u));
  } else {
    // cryptsetup 2.6.1 spells it --new-keyfile; --new-key-file is diskseal's older spelling.
    app.add_option("--" + prefix + "keyfile,--" + prefix + "key-file", src.key_file,
                   "read the new passphrase from this file");
    app.add_option("--" + prefix + "keyfile-offset", src.keyfile_offset, "skip this many bytes of the new key file");
    app.add_option("--" + prefix + "keyfile-size", src.keyfile_size, "read at most this many bytes of the new key file");
  }
}

unsigned TriesFor(const KeySource& src, bool from_vault) {
  return !from_vault && src.key_file.empty() && isatty(0) ? std::max(1u, src.tries) : 1u;
}

Result<SecureBuffer> ReadKey(Env& env, const KeySource& src, const std::string& prompt,
                             bool verify) {
  if (!src.key_file.empty()) {
    SecureBuffer all;
    if (src.key_file == "-") {
      DS_ASSIGN_OR_RETURN(all, ReadAllFd(0, kMaxKeyFile, false));
    } else {
      DS_ASSIGN_OR_RETURN(auto dev, env.Open(src.key_file, OpenOptions{}));
      uint64_t size = dev->Size();
      if (src.keyfile_offset > size)
        return InvalidArgument(src.key_file + ": --keyfile-offset is beyond the end of the file");
      uint64_t len = size - src.keyfile_offset;
      if (src.keyfile_size) {
        if (src.keyfile_size > len)
          return InvalidArgument(src.key_file + ": shorter than --keyfile-size");
        len = src.keyfile_size;
      }
      if (len > kMaxKeyFile) return InvalidArgument(src.key_file + ": key file larger than 8 MiB");
      all = SecureBuffer(len);
      DS_RETURN_IF_ERROR(dev->ReadAt(src.keyfile_offset, all.span()));
      if (all.empty()) return InvalidArgument(src.key_file + ": key file is empty");
      return all;
    }
    // stdin as a key file: offset/size apply to the stream
    if (src.keyfile_offset >= all.size() && src.keyfile_offset)
      return InvalidArgument("stdin: --keyfile-offset is beyond the end of input");
    uint64_t len = all.size() - src.keyfile_offset;
    if (src.keyfile_size && src.keyfile_size < len) len = src.keyfile_size;
    SecureBuffer out(std::span<const uint8_t>(all.data() + src.keyfile_offset, len));
    if (out.empty()) return InvalidArgument("stdin: key is empty");
    return out;
  }
  if (!isatty(0)) {
    DS_ASSIGN_OR_RETURN(SecureBuffer line, ReadAllFd(0, 512, true));
    if (line.empty()) return InvalidArgument("no passphrase on stdin");
    return line;
  }
  DS_ASSIGN_OR_RETURN(SecureBuffer first, Prompt(prompt));
  if (verify || src.verify) {
    DS_ASSIGN_OR_RETURN(SecureBuffer again, Prompt("Verify passphrase: "));
    if (!first.Equals(again.span())) return PermissionDenied("passphrases do not match (nothing was changed)");
  }
  if (first.empty()) return InvalidArgument("empty passphrase");
  return first;
}

}  // namespace ds::cli
