// The emulated NCCL's transport (docs/GPU.md, "The emulator"): a full mesh of Unix-domain stream
// sockets in the Linux abstract namespace (nothing on disk to clean up), one per pair of ranks, and
// the poll loop that moves a unit's messages over them. Every message is a header (sequence number,
// byte count) and its bytes; the receiver checks the header against the receive it posted.
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <thread>

#include "nccl_internal.h"

namespace ampipe_gpu_emulator::nccl {
namespace {

using Clock = std::chrono::steady_clock;
constexpr int kPollMs = 10;                                  // how often blocked work looks at the abort flag
constexpr auto kConnectTimeout = std::chrono::seconds(120);  // for every rank of a communicator to arrive

struct Hello {
  char magic[8];
  char token[64];
  int32_t rank;
  int32_t nranks;
  int32_t device;
  char host[64];
};
constexpr char kHelloMagic[8] = {'a', 'm', 'p', 'n', 'c', 'c', 'l', '1'};

struct Header {
  uint64_t sequence;
  uint64_t bytes;
};

// What went wrong while connecting: the code ncclCommInitRank returns and the text behind it.
struct InitError {
  ncclResult_t code = ncclSuccess;
  std::string text;
  bool set(ncclResult_t c, std::string t) {
    code = c;
    text = std::move(t);
    return false;
  }
};

std::string system_text(const std::string& what) { return what + ": " + std::strerror(errno); }

sockaddr_un listener_address(const std::string& token, int rank, socklen_t& length) {
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  const std::string name = "ampipe-nccl-emu/" + token + "/" + std::to_string(rank);
  const size_t n = std::min(name.size(), sizeof(address.sun_path) - 1);
  std::memcpy(address.sun_path + 1, name.data(), n);  // sun_path[0] == 0: the abstract namespace
  length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + n);
  return address;
}

// False (with the reason) once the communicator is aborted or the deadline has passed.
bool keep_waiting(const CommState& comm, Clock::time_point deadline, const std::string& what,
                  InitError& error) {
  if (comm.aborted) return error.set(ncclInvalidUsage, "ncclCommAbort was called during init");
  if (Clock::now() <= deadline) return true;
  return error.set(ncclSystemError, "rank " + std::to_string(comm.rank) + " timed out after " +
                                        std::to_string(kConnectTimeout.count()) + " s " + what);
}

// Waits until `fd` is ready for `events`, looking at the abort flag and the deadline every 10 ms.
bool wait_ready(const CommState& comm, int fd, short events, Clock::time_point deadline,
                const std::string& what, InitError& error) {
  while (keep_waiting(comm, deadline, what, error)) {
    pollfd p{fd, events, 0};
    const int r = ::poll(&p, 1, kPollMs);
    if (r > 0) return true;
    if (r < 0 && errno != EINTR) return error.set(ncclSystemError, system_text("poll"));
  }
  return false;
}

// Writes or reads all of `bytes` on a non-blocking socket during init.
bool move_all(const CommState& comm, int fd, void* data, size_t bytes, bool write, int peer,
              Clock::time_point deadline, InitError& error) {
  auto* p = static_cast<char*>(data);
  while (bytes > 0) {
    const ssize_t n = write ? ::send(fd, p, bytes, MSG_NOSIGNAL) : ::recv(fd, p, bytes, 0);
    if (n > 0) {
      p += n;
      bytes -= static_cast<size_t>(n);
      continue;
    }
    if (n == 0 || errno == EPIPE || errno == ECONNRESET) {
      return error.set(ncclRemoteError,
                       "rank " + std::to_string(peer) + " closed its connection during init");
    }
    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
      return error.set(ncclSystemError, system_text(write ? "send" : "recv"));
    }
    if (!wait_ready(comm, fd, write ? POLLOUT : POLLIN, deadline, "exchanging hellos", error)) return false;
  }
  return true;
}

Hello my_hello(const CommState& comm) {
  Hello h{};
  std::memcpy(h.magic, kHelloMagic, sizeof h.magic);
  std::strncpy(h.token, comm.token.c_str(), sizeof h.token - 1);
  h.rank = comm.rank;
  h.nranks = comm.nranks;
  h.device = comm.device;
  if (::gethostname(h.host, sizeof h.host - 1) != 0) std::strcpy(h.host, "unknown");
  return h;
}

bool check_hello(const CommState& comm, const Hello& h, InitError& error) {
  if (std::memcmp(h.magic, kHelloMagic, sizeof h.magic) != 0 ||
      std::strncmp(h.token, comm.token.c_str(), sizeof h.token) != 0) {
    return error.set(ncclSystemError, "a connection to rank " + std::to_string(comm.rank) +
                                          " did not come from a rank of its communicator");
  }
  if (h.nranks != comm.nranks) {
    return error.set(ncclInvalidUsage, "rank " + std::to_string(h.rank) + " was told the communicator has " +
                                           std::to_string(h.nranks) + " ranks, rank " +
                                           std::to_string(comm.rank) + " was told " +
                                           std::to_string(comm.nranks));
  }
  return true;
}

int connect_to(const CommState& comm, int peer, Clock::time_point deadline, InitError& error) {
  socklen_t length = 0;
  const sockaddr_un address = listener_address(comm.token, peer, length);
  const std::string waiting = "waiting for rank " + std::to_string(peer) + " to listen";
  while (keep_waiting(comm, deadline, waiting, error)) {
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      error.set(ncclSystemError, system_text("socket"));
      return -1;
    }
    if (::connect(fd, reinterpret_cast<const sockaddr*>(&address), length) == 0) {
      ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
      return fd;
    }
    const int e = errno;
    ::close(fd);
    if (e != ECONNREFUSED && e != ENOENT && e != EAGAIN && e != EINTR) {
      errno = e;
      error.set(ncclSystemError, system_text("connect to rank " + std::to_string(peer)));
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(kPollMs));  // the peer's listener is not up yet
  }
  return -1;
}

// Rank r's side of the pair (r, peer < r): connect, send our hello, read theirs.
bool connect_lower(CommState& comm, int peer, std::vector<Hello>& hellos, Clock::time_point deadline,
                   InitError& error) {
  const int fd = connect_to(comm, peer, deadline, error);
  if (fd < 0) return false;
  comm.sockets[peer] = fd;
  Hello mine = my_hello(comm);
  Hello theirs{};
  if (!move_all(comm, fd, &mine, sizeof mine, true, peer, deadline, error) ||
      !move_all(comm, fd, &theirs, sizeof theirs, false, peer, deadline, error) ||
      !check_hello(comm, theirs, error)) {
    return false;
  }
  if (theirs.rank != peer)
    return error.set(ncclInternalError, "rank " + std::to_string(peer) + "'s listener answered as rank " +
                                            std::to_string(theirs.rank));
  hellos[peer] = theirs;
  return true;
}

// Accepts one higher rank: read its hello, answer with ours.
bool accept_higher(CommState& comm, int listener, std::vector<Hello>& hellos, Clock::time_point deadline,
                   InitError& error) {
  if (!wait_ready(comm, listener, POLLIN, deadline, "waiting for the higher ranks to connect", error))
    return false;
  const int fd = ::accept4(listener, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
  if (fd < 0)
    return errno == EAGAIN || errno == EINTR ? true : error.set(ncclSystemError, system_text("accept"));
  Hello theirs{};
  if (!move_all(comm, fd, &theirs, sizeof theirs, false, -1, deadline, error) ||
      !check_hello(comm, theirs, error)) {
    ::close(fd);
    return false;
  }
  if (theirs.rank <= comm.rank || theirs.rank >= comm.nranks || comm.sockets[theirs.rank] >= 0) {
    ::close(fd);
    return error.set(ncclInvalidUsage,
                     "two ranks of the communicator both said they are rank " + std::to_string(theirs.rank));
  }
  comm.sockets[theirs.rank] = fd;
  hellos[theirs.rank] = theirs;
  Hello mine = my_hello(comm);
  return move_all(comm, fd, &mine, sizeof mine, true, theirs.rank, deadline, error);
}

// NCCL refuses two ranks of one communicator on one GPU; every rank sees every hello, so all refuse.
bool check_devices(const CommState& comm, const std::vector<Hello>& hellos, InitError& error) {
  for (int a = 0; a < comm.nranks; ++a) {
    for (int b = a + 1; b < comm.nranks; ++b) {
      if (hellos[a].device == hellos[b].device && std::strncmp(hellos[a].host, hellos[b].host, 64) == 0) {
        return error.set(ncclInvalidUsage,
                         "duplicate GPU: ranks " + std::to_string(a) + " and " + std::to_string(b) +
                             " are both on device " + std::to_string(hellos[a].device) + " of host " +
                             hellos[a].host + " (NCCL needs one device per rank of a communicator)");
      }
    }
  }
  return true;
}

int open_listener(const CommState& comm, InitError& error) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    error.set(ncclSystemError, system_text("socket"));
    return -1;
  }
  socklen_t length = 0;
  const sockaddr_un address = listener_address(comm.token, comm.rank, length);
  if (::bind(fd, reinterpret_cast<const sockaddr*>(&address), length) != 0) {
    const bool taken = errno == EADDRINUSE;
    error.set(taken ? ncclInvalidUsage : ncclSystemError,
              taken ? "rank " + std::to_string(comm.rank) + " of this unique id is already initialised"
                    : system_text("bind"));
    ::close(fd);
    return -1;
  }
  if (::listen(fd, SOMAXCONN) != 0) {
    error.set(ncclSystemError, system_text("listen"));
    ::close(fd);
    return -1;
  }
  return fd;
}

}  // namespace

ncclResult_t connect_ranks(CommState& comm, std::string& error_text) {
  InitError error;
  comm.sockets.assign(comm.nranks, -1);
  comm.sent_messages.assign(comm.nranks, 0);
  comm.received_messages.assign(comm.nranks, 0);
  std::vector<Hello> hellos(comm.nranks);
  hellos[comm.rank] = my_hello(comm);
  const Clock::time_point deadline = Clock::now() + kConnectTimeout;
  const int listener = open_listener(comm, error);
  bool ok = listener >= 0;
  for (int peer = 0; ok && peer < comm.rank; ++peer) ok = connect_lower(comm, peer, hellos, deadline, error);
  auto connected = [&] { return std::count(comm.sockets.begin(), comm.sockets.end(), -1) == 1; };
  while (ok && !connected()) ok = accept_higher(comm, listener, hellos, deadline, error);
  if (listener >= 0) ::close(listener);
  if (ok) ok = check_devices(comm, hellos, error);
  error_text = ok ? ""
                  : "ncclCommInitRank (rank " + std::to_string(comm.rank) + " of " +
                        std::to_string(comm.nranks) + "): " + error.text;
  return ok ? ncclSuccess : error.code;
}

// ---- Moving a unit's messages ---------------------------------------------------------------------
namespace {

// One peer's share of an exchange: its sends and receives, each in order, and how far each got.
struct Lane {
  int peer = 0;
  int fd = -1;
  std::vector<const Message*> sends, receives;
  size_t send_index = 0, send_done = 0;  // done: bytes of header + payload of the current message
  size_t receive_index = 0, receive_done = 0;
  Header out{}, in{};
  bool sending() const { return send_index < sends.size(); }
  bool receiving() const { return receive_index < receives.size(); }
};

// What ended an exchange early, if anything.
struct Failure {
  ncclResult_t code = ncclSuccess;
  std::string text;
};

std::string lost_peer(const CommState& comm, const Lane& lane, const char* doing) {
  return "rank " + std::to_string(comm.rank) + ": rank " + std::to_string(lane.peer) +
         " closed its connection (its process exited or aborted its communicator) while rank " +
         std::to_string(comm.rank) + " was " + doing;
}

bool io_failed(const CommState& comm, const Lane& lane, ssize_t n, bool sending, Failure& failure) {
  if (n == 0 || errno == EPIPE || errno == ECONNRESET) {
    failure = {ncclRemoteError, lost_peer(comm, lane, sending ? "sending to it" : "receiving from it")};
  } else {
    failure = {ncclSystemError, system_text(sending ? "send" : "recv")};
  }
  return false;
}

// Writes as much of the lane's current messages as the socket takes.
bool pump_send(CommState& comm, Lane& lane, Failure& failure) {
  while (lane.sending()) {
    const Message& m = *lane.sends[lane.send_index];
    if (lane.send_done == 0) lane.out = {comm.sent_messages[lane.peer], m.bytes};
    iovec parts[2];
    int count = 0;
    if (lane.send_done < sizeof(Header)) {
      parts[count++] = {reinterpret_cast<char*>(&lane.out) + lane.send_done, sizeof(Header) - lane.send_done};
    }
    const size_t payload_done = lane.send_done > sizeof(Header) ? lane.send_done - sizeof(Header) : 0;
    if (m.bytes > payload_done) {
      parts[count++] = {const_cast<char*>(static_cast<const char*>(m.send_data)) + payload_done,
                        m.bytes - payload_done};
    }
    msghdr message{};
    message.msg_iov = parts;
    message.msg_iovlen = static_cast<size_t>(count);
    const ssize_t n = count == 0 ? 0 : ::sendmsg(lane.fd, &message, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return true;
    if (n < 0) return io_failed(comm, lane, n, true, failure);
    lane.send_done += static_cast<size_t>(n);
    if (lane.send_done == sizeof(Header) + m.bytes) {
      ++comm.sent_messages[lane.peer];
      ++lane.send_index;
      lane.send_done = 0;
    }
  }
  return true;
}

bool check_header(const CommState& comm, const Lane& lane, const Message& m, Failure& failure) {
  const uint64_t expected = comm.received_messages[lane.peer];
  if (lane.in.bytes == m.bytes && lane.in.sequence == expected) return true;
  failure = {ncclInvalidUsage, "rank " + std::to_string(comm.rank) + " expected message #" +
                                   std::to_string(expected) + " of " + std::to_string(m.bytes) +
                                   " bytes from rank " + std::to_string(lane.peer) + ", but rank " +
                                   std::to_string(lane.peer) + " sent message #" +
                                   std::to_string(lane.in.sequence) + " of " + std::to_string(lane.in.bytes) +
                                   " bytes: the two ranks' counts, datatypes or operation orders differ"};
  return false;
}

// Reads the lane's current messages as far as the socket has them, never past the last one posted.
bool pump_receive(CommState& comm, Lane& lane, Failure& failure) {
  while (lane.receiving()) {
    const Message& m = *lane.receives[lane.receive_index];
    char* target = nullptr;
    size_t want = 0;
    if (lane.receive_done < sizeof(Header)) {
      target = reinterpret_cast<char*>(&lane.in) + lane.receive_done;
      want = sizeof(Header) - lane.receive_done;
    } else {
      const size_t payload_done = lane.receive_done - sizeof(Header);
      target = static_cast<char*>(m.recv_data) + payload_done;
      want = m.bytes - payload_done;
    }
    const ssize_t n = want == 0 ? 0 : ::recv(lane.fd, target, want, MSG_DONTWAIT);
    if (want > 0 && n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return true;
    if (want > 0 && n <= 0) return io_failed(comm, lane, n, false, failure);
    lane.receive_done += static_cast<size_t>(n);
    if (lane.receive_done == sizeof(Header) && !check_header(comm, lane, m, failure)) return false;
    if (lane.receive_done == sizeof(Header) + m.bytes) {
      ++comm.received_messages[lane.peer];
      ++lane.receive_index;
      lane.receive_done = 0;
    }
  }
  return true;
}

std::vector<Lane> lanes_of(const CommState& comm, const std::vector<Message>& messages) {
  std::vector<Lane> lanes;
  std::vector<int> lane_of(comm.nranks, -1);
  for (const Message& m : messages) {
    if (lane_of[m.peer] < 0) {
      lane_of[m.peer] = static_cast<int>(lanes.size());
      lanes.emplace_back();
      lanes.back().peer = m.peer;
      lanes.back().fd = comm.sockets[m.peer];
    }
    Lane& lane = lanes[lane_of[m.peer]];
    (m.is_send ? lane.sends : lane.receives).push_back(&m);
  }
  return lanes;
}

}  // namespace

bool exchange(CommState& comm, const std::vector<Message>& messages) {
  std::vector<Lane> lanes = lanes_of(comm, messages);
  std::vector<pollfd> polls;
  std::vector<Lane*> polled;
  Failure failure;
  while (!comm.aborted) {
    polls.clear();
    polled.clear();
    for (Lane& lane : lanes) {
      const short events = (lane.sending() ? POLLOUT : 0) | (lane.receiving() ? POLLIN : 0);
      if (events == 0) continue;
      polls.push_back({lane.fd, events, 0});
      polled.push_back(&lane);
    }
    if (polls.empty()) return true;
    const int ready = ::poll(polls.data(), polls.size(), kPollMs);
    if (ready < 0 && errno != EINTR) {
      failure = {ncclSystemError, system_text("poll")};
      break;
    }
    bool ok = true;
    for (size_t i = 0; ok && ready > 0 && i < polls.size(); ++i) {
      const short r = polls[i].revents;
      if (r & POLLNVAL) {
        failure = {ncclSystemError, "rank " + std::to_string(comm.rank) + ": the connection to rank " +
                                        std::to_string(polled[i]->peer) + " is closed"};
        ok = false;
      }
      if (ok && (r & (POLLOUT | POLLERR | POLLHUP)) && polled[i]->sending())
        ok = pump_send(comm, *polled[i], failure);
      if (ok && (r & (POLLIN | POLLERR | POLLHUP)) && polled[i]->receiving()) {
        ok = pump_receive(comm, *polled[i], failure);
      }
    }
    if (!ok) break;
  }
  if (!comm.aborted && failure.code != ncclSuccess) comm.fail(failure.code, failure.text);
  return false;
}

}  // namespace ampipe_gpu_emulator::nccl
