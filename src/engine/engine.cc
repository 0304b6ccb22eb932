#include "engine/engine.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <thread>

#include "crypto/crypto.h"
#include "engine/reencrypt_state.h"
#include "io/io_buffer.h"

namespace ds::engine {

namespace {

// Old -> new transform of whole sectors, spread over threads, each with its own cipher contexts.
class Transformer {
 public:
  static Result<Transformer> Create(const State& st, const SecureBuffer* old_key,
                                    const SecureBuffer* new_key, unsigned threads) {
    Transformer t;
    t.st_ = &st;
    for (unsigned i = 0; i < threads; ++i) {
      Pair p;
      if (st.old_seg.type == "crypt") {
        DS_ASSIGN_OR_RETURN(p.old_c, SectorCipher::Create(st.old_seg.cipher, old_key->span()));
      }
      if (st.new_seg.type == "crypt") {
        DS_ASSIGN_OR_RETURN(p.new_c, SectorCipher::Create(st.new_seg.cipher, new_key->span()));
      }
      t.pairs_.push_back(std::move(p));
    }
    return t;
  }

  // `buf` holds the on-disk bytes of data offset [pos, pos + size) in the old layout; on return
  // it holds them in the new layout.
  Status Apply(std::span<uint8_t> buf, uint64_t pos) {
    const uint64_t unit = st_->sector_size();
    const size_t n = pairs_.size();
    const uint64_t units = buf.size() / unit;
    if (n == 1 || units < 2 * n) return ApplyOne(pairs_[0], buf, pos);
    std::vector<Status> results(n);
    std::vector<std::thread> workers;
    uint64_t per = (units + n - 1) / n * unit, start = 0;
    for (size_t i = 0; i < n && start < buf.size(); ++i, start += per) {
      uint64_t len = std::min<uint64_t>(per, buf.size() - start);
      workers.emplace_back([this, i, &results, buf, start, len, pos] {
        results[i] = ApplyOne(pairs_[i], buf.subspan(start, len), pos + start);
      });
    }
    for (auto& w : workers) w.join();
    for (auto& r : results) DS_RETURN_IF_ERROR(r);
    return Status::Ok();
  }

 private:
  struct Pair {
    std::unique_ptr<SectorCipher> old_c, new_c;
  };
  Status ApplyOne(Pair& p, std::span<uint8_t> buf, uint64_t pos) {
    if (p.old_c)
      DS_RETURN_IF_ERROR(p.old_c->Decrypt(buf, st_->old_seg.iv_tweak + pos / 512, st_->old_seg.sector_size));
    if (p.new_c)
      DS_RETURN_IF_ERROR(p.new_c->Encrypt(buf, st_->new_seg.iv_tweak + pos / 512, st_->new_seg.sector_size));
    return Status::Ok();
  }
  const State* st_ = nullptr;
  std::vector<Pair> pairs_;

 public:
  size_t threads() const { return pairs_.size(); }
  // Thread `i`'s own cipher contexts (i < threads()); same contract as Apply.
  Status ApplyOn(size_t i, std::span<uint8_t> buf, uint64_t pos) { return ApplyOne(pairs_[i], buf, pos); }
};

// Seconds since the previous Lap (or construction).
class Clock {
 public:
  double Lap() {
    const auto now = std::chrono::steady_clock::now();
    const double d = std::chrono::duration<double>(now - last_).count();
    last_ = now;
    return d;
  }

 private:
  std::chrono::steady_clock::time_point last_ = std::chrono::steady_clock::now();
};

constexpr const char* kWipeToken = "diskseal-wipe";

void AddWipeToken(luks2::Metadata& md, uint64_t offset, uint64_t size) {
  int id = 0;
  while (md.json["tokens"].contains(std::to_string(id))) ++id;
  md.json["tokens"][std::to_string(id)] = {
      {"type", kWipeToken}, {"keyslots", luks2::Json::array()},
      {"areas", luks2::Json::array({luks2::Json::array({luks2::U64Str(offset), luks2::U64Str(size)})})}};
}

Status WipeWithNoise(BlockDevice& dev, uint64_t off, uint64_t size) {
  IoBuffer noise(size_t(std::min<uint64_t>(size, 1u << 20)));
  for (uint64_t done = 0; done < size; done += noise.size()) {
    size_t n = size_t(std::min<uint64_t>(noise.size(), size - done));
    DS_RETURN_IF_ERROR(RandomBytes(noise.span().first(n)));
    DS_RETURN_IF_ERROR(dev.WriteAt(off + done, noise.span().first(n)));
  }
  return dev.Sync();
}

class Runner {
 public:
  Runner(luks2::Volume& v, State st, Transformer tf, const EngineOptions& o, unsigned threads)
      : v_(v), st_(std::move(st)), tf_(std::move(tf)), o_(o), threads_(threads),
        data_(v.data_device()), md_dev_(v.metadata_device()) {}

  Status Go() {
    if (st_.hotzone_len) DS_RETURN_IF_ERROR(Recover(*st_.hotzone_len));
    const uint64_t hz = HotzoneLimit();
    // In use, a gate may vary the zone length: the buffer is allocated once at the limit (pages
    // are touched only as zones use them), never grown step by step, which would leave freed
    // buffers of other sizes in the heap, locked in memory with the rest of an online run.
    if (o_.in_use && !st_.moved && !st_.shift) buf_.resize(size_t(hz));
    const uint64_t run_start = st_.done;
    bool have = false;  // buf_ already holds the next hotzone (read ahead by the previous step)
    const uint64_t end = o_.until_done ? std::min(o_.until_done, st_.data_size) : st_.data_size;
    while (st_.done < end) {
      // No read is in flight here: every Step joins its read-ahead before it returns.
      if ((o_.stop && o_.stop->load()) || (o_.stop_after && st_.done - run_start >= o_.stop_after)) {
        if (done_uncommitted_) DS_RETURN_IF_ERROR(Commit(st_.done, std::nullopt));
        return Interrupted(v_.name() + ": stopped at a commit point after " +
                           std::to_string(st_.done) + " of " + std::to_string(st_.data_size) +
                           " bytes; the volume is consistent and resumes with `diskseal resume`");
      }
      uint64_t len = std::min(NextLength(st_.done, hz), end - st_.done);
      if (o_.gate && !IsShiftStep(st_.done, len)) {
        const uint64_t unit = ZoneUnit();
        const uint64_t want = o_.gate->ZoneLength(st_.StepOffset(st_.done, len), len, st_.backward);
        if (want < len) len = std::max<uint64_t>(want / unit * unit, unit);
        len = std::min(len, end - st_.done);
      }
      DS_RETURN_IF_ERROR(Step(len, hz, have));
    }
    if (end < st_.data_size) {
      if (done_uncommitted_) DS_RETURN_IF_ERROR(Commit(st_.done, std::nullopt));
      return Status::Ok();
    }
    // A header whose every byte was already new (cryptsetup stores that state just before its
    // final commit) still needs the final layout.
    if (!finished_) DS_RETURN_IF_ERROR(Commit(st_.data_size, std::nullopt));
    return Status::Ok();
  }

  bool finished() const { return finished_; }

  // Idempotent and safe at any time after the final commit: the area is no longer referenced.
  Status Scrub(uint64_t off, uint64_t size) {
    IoBuffer zero(size_t(std::min<uint64_t>(size, 1u << 20)));
    std::fill_n(zero.data(), zero.size(), uint8_t{0});
    for (uint64_t done = 0; done < size; done += zero.size()) {
      size_t n = size_t(std::min<uint64_t>(zero.size(), size - done));
      DS_RETURN_IF_ERROR(md_dev_.WriteAt(off + done, zero.span().first(n)));
    }
    return md_dev_.Sync();
  }

 private:
  // The next hotzone's length. With a data shift the moved copy of [0, shift) is done in one
  // piece (cryptsetup cannot resume a split one) and the linear part in pieces of at most
  // `shift` bytes, ending at `shift` (cryptsetup's reencrypt_offset_backward_moved).
  uint64_t NextLength(uint64_t done, uint64_t hz) const {
    const uint64_t left = st_.data_size - done;
    if (!st_.moved) return std::min(hz, left);
    return st_.ShiftStepLength(st_.done);
  }

  // Every hotzone is a whole number of these (sectors and resilience blocks).
  uint64_t ZoneUnit() const { return std::max<uint64_t>(st_.sector_size(), st_.area.block); }

  // A zone's bytes [at, at+b.size()) as the medium holds them. In use, others write the medium
  // (engine.h): users_bypass_cache reads around this device's page cache, else its cache of the
  // range is dropped first.
  Status ReadZone(uint64_t at, std::span<uint8_t> b) {
    if (o_.users_bypass_cache) return data_.ReadAtUncached(at, b);
    if (o_.in_use) data_.DropCache(at, b.size());
    return data_.ReadAt(at, b);
  }

  // Writes transformed bytes of a zone at `at`: around the page cache with users_bypass_cache
  // (engine.h says why), else buffered and handed to writeback at once, so that the sync that
  // ends the hotzone waits for less.
  Status WriteZone(uint64_t at, std::span<const uint8_t> b) {
    if (o_.users_bypass_cache) return data_.WriteAtUncached(at, b);
    DS_RETURN_IF_ERROR(data_.WriteAt(at, b));
    data_.StartWriteback(at, b.size());
    return Status::Ok();
  }

  uint64_t HotzoneLimit() const {
    const uint64_t unit = ZoneUnit();
    // Outside datashift two hotzone buffers are live at once (the one being written and the
    // next one, read ahead): each gets half of the memory bound.
    // Online (in_use) nothing is read ahead: one buffer, the whole bound.
    const uint64_t bound = st_.area.type == Resilience::kDatashift || o_.in_use ? o_.hotzone_bytes : o_.hotzone_bytes / 2;
    uint64_t hz = std::max<uint64_t>(bound / unit * unit, unit);
    if (st_.area.type == Resilience::kJournal) hz = std::min(hz, st_.area.size / unit * unit);
    if (st_.area.type == Resilience::kChecksum || st_.area.type == Resilience::kDatashiftChecksum) {
      uint64_t hs = HashSize(st_.area.hash);
      hz = std::min(hz, st_.area.size / hs * st_.area.block / unit * unit);
    }
    return hz;
  }

  Status Commit(uint64_t done, std::optional<uint64_t> hot) {
    luks2::Metadata& md = v_.mutable_metadata();
    if (done == st_.data_size && !hot) {
      finished_ = true;
      SetFinished(md, st_);
      // The moved copy held plaintext: its wipe is recorded in the same commit as the final
      // layout (cryptsetup sees a finished volume) and done by FinishPendingWipe, repeatably.
      if (st_.moved && st_.mode == Mode::kEncrypt) AddWipeToken(md, st_.moved->offset, st_.shift);
    } else {
      SetProgress(md, st_, done, hot);
    }
    return v_.Commit();
  }

  Status WriteResilience(std::span<const uint8_t> raw) {
    // datashift: the source is never overwritten before its hotzone is committed done.
    if (st_.area.type == Resilience::kNone || st_.area.type == Resilience::kDatashift) return Status::Ok();
    if (st_.area.type == Resilience::kJournal) {
      DS_RETURN_IF_ERROR(md_dev_.WriteAt(st_.area.offset, raw));
    } else {
      const size_t hs = HashSize(st_.area.hash);
      const size_t blocks = raw.size() / st_.area.block;
      Bytes sums(blocks * hs);
      // Checksums are computed on all cores, each thread over whole blocks.
      const size_t n = std::max<size_t>(1, std::min<size_t>(threads_, blocks));
      const size_t per = (blocks + n - 1) / n;
      std::vector<Status> res(n);
      std::vector<std::thread> workers;
      for (size_t t = 0; t < n; ++t) {
        size_t b0 = t * per, b1 = std::min(blocks, b0 + per);
        if (b0 >= b1) break;
        workers.emplace_back([&, t, b0, b1] {
          res[t] = HashBlocks(st_.area.hash, raw.subspan(b0 * st_.area.block, (b1 - b0) * st_.area.block),
                              st_.area.block, std::span<uint8_t>(sums).subspan(b0 * hs, (b1 - b0) * hs));
        });
      }
      for (auto& w : workers) w.join();
      for (auto& r : res) DS_RETURN_IF_ERROR(r);
      DS_RETURN_IF_ERROR(md_dev_.WriteAt(st_.area.offset, sums));
    }
    // The resilience data must be durable before the header that refers to it.
    return md_dev_.Sync();
  }

  // Calls fn(t, at, n) for the pieces [at, at+n) of [0, len), every thread t taking one
  // contiguous share of whole sectors, pieces of at most `piece` bytes (a multiple of the
  // sector size). Returns the first error.
  template <typename Fn>
  Status ForEachPiece(uint64_t len, uint64_t piece, Fn fn) {
    const uint64_t unit = st_.sector_size();
    const size_t n = std::max<size_t>(1, std::min<size_t>(tf_.threads(), len / unit));
    const uint64_t per = (len / unit + n - 1) / n * unit;
    std::vector<Status> res(n);
    auto work = [&](size_t t) {
      const uint64_t b0 = t * per, b1 = std::min(len, b0 + per);
      for (uint64_t at = b0; at < b1 && res[t].ok(); at += piece) res[t] = fn(t, at, std::min(piece, b1 - at));
    };
    std::vector<std::thread> workers;
    for (size_t t = 1; t < n; ++t) workers.emplace_back(work, t);
    work(0);
    for (auto& w : workers) w.join();
    for (auto& r : res) DS_RETURN_IF_ERROR(r);
    return Status::Ok();
  }

  // A multiple of every sector size, small enough to stay in a core's L2 cache between the
  // read, the cipher and the write.
  static constexpr uint64_t kPiece = 256u << 10;
  // Written around the page cache (users_bypass_cache), each piece's write is waited for by its
  // thread: larger pieces wait fewer times (in the QEMU guest a direct 256 KiB write moved data
  // at two thirds the rate of a 4 MiB one). Not tuned further: the cipher dominates the step.
  static constexpr uint64_t kDirectPiece = 1u << 20;

  // Datashift: old logical bytes [pos, pos+len) -> new place, read, transformed and written piece
  // by piece on every thread, each through its own small buffer: the piece stays in the core's
  // cache from the read through the cipher to the write. Reads and writes may interleave
  // freely: the hotzone's writes land at least `shift` bytes above its reads. Each written
  // piece is handed to writeback at once, so the sync that ends the hotzone waits for less.
  // (Buffered on purpose: O_DIRECT writes of 4 MiB batches measured 1.5x slower on this virtio
  // disk, README "The in-place engine".)
  Status MoveHotzone(uint64_t pos, uint64_t len) {
    while (pieces_.size() < tf_.threads()) pieces_.emplace_back(size_t(kPiece));
    return ForEachPiece(len, kPiece, [&](size_t t, uint64_t at, uint64_t n) -> Status {
      std::span<uint8_t> piece(pieces_[t].data(), size_t(n));
      const uint64_t to = st_.NewAt(pos + at);
      DS_RETURN_IF_ERROR(data_.ReadAt(st_.OldAt(pos + at), piece));
      DS_RETURN_IF_ERROR(tf_.ApplyOn(t, piece, pos + at));
      DS_RETURN_IF_ERROR(data_.WriteAt(to, piece));
      data_.StartWriteback(to, n);
      return Status::Ok();
    });
  }

  // Whether the step at `done` moves its hotzone without resilience data (see Step).
  bool IsShiftStep(uint64_t done, uint64_t len) const {
    return st_.area.type == Resilience::kDatashift || (st_.decrypt_shift() && st_.StepOffset(done, len) >= st_.shift);
  }

  // One hotzone of `len` bytes (hz: the hotzone limit, to size the next one). `have`: buf_
  // already holds this hotzone's bytes; on return, whether it holds the next one's.
  Status Step(uint64_t len, uint64_t hz, bool& have) {
    const uint64_t done = st_.done, pos = st_.StepOffset(done, len);
    // Decryption with data shift: every hotzone but the moved segment (decrypted in place, with
    // checksums below) is written below its source, as with datashift.
    if (IsShiftStep(done, len)) {
      // No resilience data to write first: the source itself is the resilience. The commit
      // point that flags this hotzone also records the previous one as done (its data is
      // synced): that header is byte for byte the one a separate "done" commit followed by
      // this one would leave, and a crash before it redoes the previous hotzone from its
      // source, which nothing has written yet (this hotzone's writes start after the commit).
      DS_RETURN_IF_ERROR(Commit(done, len));  // commit point: the hotzone is now in progress
      done_uncommitted_ = false;
      DS_RETURN_IF_ERROR(MoveHotzone(pos, len));
      DS_RETURN_IF_ERROR(data_.Sync());
      // "Done" is committed by the next step's first commit, at a stop, or with the final layout.
      done_uncommitted_ = true;
      st_.done = done + len;
      if (o_.progress) o_.progress->Advance(len);
      return Status::Ok();
    }
    StepTiming tm;
    tm.offset = pos;
    tm.len = len;
    Clock clk;
    if (o_.gate) DS_RETURN_IF_ERROR(o_.gate->Hold(pos, len, done + len));
    tm.hold = clk.Lap();
    if (!have) {
      buf_.resize(len);
      DS_RETURN_IF_ERROR(ReadZone(st_.OldAt(pos), buf_));
    }
    tm.read = clk.Lap();
    have = false;
    // Read-ahead: the next hotzone is read into next_ on a reader thread while this one goes
    // through resilience, commit, transform, write, sync and commit. Safe because of this
    // invariant: the bytes the next hotzone reads ([OldAt(npos), +nlen) on the data device) are
    // disjoint from every byte this step writes there ([NewAt(pos), +len); the resilience area
    // and the header lie outside the data segments), and no one else writes them before the
    // next step's own commit -- so the bytes read ahead are exactly the on-disk bytes the next
    // step's resilience data must describe. Checked here for each pair; read in turn when not.
    // Reads change nothing on disk: the order of writes and syncs, every commit point, is as
    // without it.
    ReadAhead ra;
    const uint64_t ndone = done + len;
    if (ndone < st_.data_size && !o_.in_use) {
      const uint64_t nlen = NextLength(ndone, hz), from = st_.OldAt(st_.StepOffset(ndone, nlen));
      const uint64_t to = st_.NewAt(pos);
      if (from + nlen <= to || to + len <= from) {
        next_.resize(nlen);
        ra.Start(data_, from, next_);
      }
    }
    const Status s = [&]() -> Status {
      // A previous hotzone left flagged (done_uncommitted_) was a datashift one, whose
      // recovery does not read the resilience area: overwriting it here is safe, and the
      // commit below records that hotzone done.
      DS_RETURN_IF_ERROR(WriteResilience(buf_));
      tm.resilience = clk.Lap();
      DS_RETURN_IF_ERROR(Commit(done, len));  // commit point: the hotzone is now in progress
      tm.commit_flag = clk.Lap();
      done_uncommitted_ = false;
      // Transformed and written piece by piece on every thread: each piece goes from the cipher
      // to the device while in cache, and the writes start as early as they can.
      const uint64_t piece_len = o_.users_bypass_cache ? kDirectPiece : kPiece;
      const Status written = ForEachPiece(len, piece_len, [&](size_t t, uint64_t at, uint64_t n) -> Status {
        std::span<uint8_t> piece(buf_.data() + at, size_t(n));
        DS_RETURN_IF_ERROR(tf_.ApplyOn(t, piece, pos + at));
        return WriteZone(st_.NewAt(pos + at), piece);
      });
      DS_RETURN_IF_ERROR(written);
      tm.write = clk.Lap();
      DS_RETURN_IF_ERROR(data_.Sync());
      tm.sync = clk.Lap();
      DS_RETURN_IF_ERROR(Commit(done + len, std::nullopt));  // the hotzone is done
      tm.commit_done = clk.Lap();
      return Status::Ok();
    }();
    const bool read_ahead = ra.started();
    // Joined before anything returns: the reader writes into next_. A failed read-ahead is not
    // an error of this step: the next step reads again and reports it there.
    const bool ahead_ok = ra.Wait();
    DS_RETURN_IF_ERROR(s);
    st_.done = ndone;
    if (o_.gate) DS_RETURN_IF_ERROR(o_.gate->Release(v_.metadata()));
    tm.release = clk.Lap();
    if (o_.timings) o_.timings->push_back(tm);
    if (o_.progress) o_.progress->Advance(len);
    if (read_ahead && ahead_ok) {
      std::swap(buf_, next_);
      have = true;
    }
    return Status::Ok();
  }

  // At most one read in flight on its own thread. Threading: Start and Wait are called by the
  // Runner's thread only; between them the reader alone touches `buf`, which must outlive Wait.
  class ReadAhead {
   public:
    ReadAhead() = default;
    ReadAhead(const ReadAhead&) = delete;
    ReadAhead& operator=(const ReadAhead&) = delete;
    ~ReadAhead() { (void)Wait(); }
    void Start(BlockDevice& dev, uint64_t off, std::span<uint8_t> buf) {
      t_ = std::thread([this, &dev, off, buf] { ok_ = dev.ReadAt(off, buf).ok(); });
    }
    bool started() const { return t_.joinable(); }
    // Joins the reader; true if a read was started and succeeded.
    bool Wait() {
      if (!t_.joinable()) return false;
      t_.join();
      return ok_;
    }

   private:
    std::thread t_;
    bool ok_ = false;
  };

  Status Recover(uint64_t len) {
    const uint64_t done = st_.done, pos = st_.StepOffset(done, len);
    const uint64_t at = st_.NewAt(pos);
    if (o_.gate) DS_RETURN_IF_ERROR(o_.gate->Hold(pos, len, done + len));
    auto type = st_.area.type;
    if (st_.decrypt_shift()) type = pos >= st_.shift ? Resilience::kDatashift : Resilience::kChecksum;
    if (type == Resilience::kJournal || type == Resilience::kChecksum) buf_.resize(len);
    switch (type) {
      case Resilience::kDatashiftChecksum:  // mapped above
      case Resilience::kDatashift:
        // The hotzone's source is intact (writes never reach unread source): do it again.
        DS_RETURN_IF_ERROR(MoveHotzone(pos, len));
        break;
      case Resilience::kNone:
        return Corrupt(v_.name() + ": an interrupted step over bytes [" + std::to_string(pos) + ", " +
                       std::to_string(pos + len) + ") ran with resilience none and cannot be recovered");
      case Resilience::kJournal: {
        DS_RETURN_IF_ERROR(md_dev_.ReadAt(st_.area.offset, buf_));
        DS_RETURN_IF_ERROR(tf_.Apply(buf_, pos));
        DS_RETURN_IF_ERROR(WriteZone(at, buf_));
        break;
      }
      case Resilience::kChecksum: {
        const size_t hs = HashSize(st_.area.hash);
        const uint64_t block = st_.area.block;
        Bytes sums(len / block * hs), now(len / block * hs);
        DS_RETURN_IF_ERROR(md_dev_.ReadAt(st_.area.offset, sums));
        DS_RETURN_IF_ERROR(ReadZone(at, buf_));
        DS_RETURN_IF_ERROR(HashBlocks(st_.area.hash, buf_, block, now));
        for (uint64_t i = 0; i * block < len; ++i) {
          std::span<uint8_t> b(buf_.data() + i * block, block);
          if (std::memcmp(now.data() + i * hs, sums.data() + i * hs, hs) != 0) continue;  // already new
          DS_RETURN_IF_ERROR(tf_.Apply(b, pos + i * block));
          DS_RETURN_IF_ERROR(WriteZone(at + i * block, b));
        }
        break;
      }
    }
    DS_RETURN_IF_ERROR(data_.Sync());
    DS_RETURN_IF_ERROR(Commit(done + len, std::nullopt));
    st_.done = done + len;
    st_.hotzone_len.reset();
    if (o_.gate) DS_RETURN_IF_ERROR(o_.gate->Release(v_.metadata()));
    if (o_.progress) o_.progress->Advance(len);
    return Status::Ok();
  }

  luks2::Volume& v_;
  State st_;
  Transformer tf_;
  const EngineOptions& o_;
  unsigned threads_;
  BlockDevice& data_;
  BlockDevice& md_dev_;
  // Every buffer data moves through is an IoBuffer (page-aligned: see io/io_buffer.h).
  IoBuffer buf_;
  IoBuffer next_;  // the read-ahead buffer (not with datashift)
  std::vector<IoBuffer> pieces_;  // MoveHotzone's per-thread buffers
  bool finished_ = false;
  // The last hotzone's data is synced but the header still flags it in progress (datashift
  // steps only; see Step). Any commit that follows records it.
  bool done_uncommitted_ = false;
};

}  // namespace

Status FinishPendingWipe(luks2::Volume& volume) {
  luks2::Json& tokens = volume.mutable_metadata().json["tokens"];
  std::vector<std::string> ids;
  for (const auto& [k, t] : tokens.items())
    if (luks2::StrOr(t, "type") == kWipeToken) ids.push_back(k);
  if (ids.empty()) return Status::Ok();
  for (const auto& k : ids)
    for (const auto& a : tokens[k]["areas"]) {
      auto off = luks2::JsonU64(a[0]), size = luks2::JsonU64(a[1]);
      if (!off || !size || *off > volume.data_device().Size() || *size > volume.data_device().Size() - *off)
        return Corrupt(volume.name() + ": token " + k + " names an area outside the device");
      DS_RETURN_IF_ERROR(WipeWithNoise(volume.data_device(), *off, *size));
    }
  for (const auto& k : ids) tokens.erase(k);
  return volume.Commit();  // after the wipe is durable: until then the token says "do it again"
}

Status RunOperation(luks2::Volume& volume, const std::map<int, const SecureBuffer*>& keys,
           const EngineOptions& opts) {
  DS_ASSIGN_OR_RETURN(auto st, ReadState(volume.metadata(), volume.data_device().Size()));
  if (!st) return FinishPendingWipe(volume);
  if ((st->area.type == Resilience::kChecksum || st->area.type == Resilience::kDatashiftChecksum) &&
      (st->area.block % st->sector_size() || HashSize(st->area.hash) == 0))
    return Unsupported(volume.name() + ": checksum blocks must be whole sectors of a known hash");
  auto key = [&](int digest) -> const SecureBuffer* {
    if (digest < 0) return nullptr;
    auto it = keys.find(digest);
    return it == keys.end() ? nullptr : it->second;
  };
  const SecureBuffer* old_key = key(st->digest_old);
  const SecureBuffer* new_key = key(st->digest_new);
  if ((st->digest_old >= 0 && !old_key) || (st->digest_new >= 0 && !new_key))
    return PermissionDenied(volume.name() + ": the passphrase does not open a key this operation needs");
  DS_RETURN_IF_ERROR(CheckVerificationDigest(volume.metadata(), *st, old_key, new_key)
                         .WithContext(volume.name()));
  if ((opts.in_use || opts.gate) && (st->moved || st->shift || st->decrypt_shift()))
    return Unsupported(volume.name() + ": an operation that moves the data (header at the start of the device) "
                       "cannot run while the volume is in use; close it first");
  unsigned threads = opts.threads ? opts.threads : std::max(1u, std::thread::hardware_concurrency());
  DS_ASSIGN_OR_RETURN(Transformer tf, Transformer::Create(*st, old_key, new_key, threads));
  // Areas that hold nothing of value once the operation is done: the reencryption area (it held
  // checksums or copies of the data) and, after a reencryption, the old key's keyslots.
  std::vector<std::pair<uint64_t, uint64_t>> scrub = {{st->area.offset, st->area.size}};
  if (st->mode == Mode::kReencrypt && st->digest_old >= 0)
    for (const auto& ks : luks2::Keyslots(volume.metadata())) {
      auto d = luks2::DigestOfKeyslot(volume.metadata(), ks.id);
      if (d && d->id == st->digest_old) scrub.emplace_back(ks.area_offset, ks.area_size);
    }
  Runner r(volume, *st, std::move(tf), opts, threads);
  DS_RETURN_IF_ERROR(r.Go());
  if (!r.finished()) return Status::Ok();  // stopped at opts.until_done
  for (auto [off, size] : scrub) DS_RETURN_IF_ERROR(r.Scrub(off, size));
  return FinishPendingWipe(volume);
}

}  // namespace ds::engine
