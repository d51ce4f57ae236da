// A "null" TURN server: the least a UDP TURN relay can do per packet with readiness-based I/O
// (epoll ET + recvmmsg + sendmmsg, as ferroturn's shard), so that `ferroturn-bench` can drive
// it with exactly the load it drives coturn and ferroturn with (benches/README.md, "The
// floor"). It is NOT a TURN server: no authentication (any Allocate with MESSAGE-INTEGRITY
// succeeds, its MAC unchecked), no permissions, no timers, no peer filtering, no error cases,
// IPv4 only, one peer and one channel per allocation, no lookup beyond an array indexed by the
// client's port. What it keeps is what RFC 8656 makes every server do: a STUN answer per
// request, one relay socket per allocation (§7.2: a distinct relayed transport address),
// ChannelData and Data-indication framing, and the system calls to move each datagram.
// Its answers carry no MESSAGE-INTEGRITY or FINGERPRINT (~32 B shorter than a real server's).
// It has no UDP GSO: where datagrams come in trains (bursts, saturation) a server with GSO
// does less kernel work than it, so there it is a reference point, not a floor.
//
//   null_turn PORT      listen on 127.0.0.1:PORT until SIGTERM
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define BATCH 32
#define MAXA 65536
#define MAGIC 0x2112A442u

struct alloc {
  int fd;  // relay socket, -1 when free
  struct sockaddr_in client, peer;
  uint16_t channel;  // 0: none bound, Data indications
};

static struct alloc allocs[MAXA];  // index = client's source port (all clients on 127.0.0.1)
static int lfd, ep;
static volatile sig_atomic_t stop;

static void on_term(int s) { (void)s; stop = 1; }

static int udp_socket(int port) {
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
  if (s < 0) {
    perror("socket");
    exit(1);
  }
  int big = 4 << 20;
  setsockopt(s, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
  setsockopt(s, SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(s, (void *)&a, sizeof a)) {
    perror("bind");
    exit(1);
  }
  return s;
}

static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static void wr16(uint8_t *p, uint16_t v) { p[0] = v >> 8, p[1] = (uint8_t)v; }
static void wr32(uint8_t *p, uint32_t v) { wr16(p, v >> 16), wr16(p + 2, (uint16_t)v); }

// First attribute of `type` in a STUN message, or NULL; *len gets its length.
static const uint8_t *attr(const uint8_t *m, int n, uint16_t type, int *len) {
  int at = 20, end = 20 + rd16(m + 2);
  if (end > n) end = n;
  while (at + 4 <= end) {
    int t = rd16(m + at), l = rd16(m + at + 2);
    if (at + 4 + l > end) return NULL;
    if (t == type) {
      *len = l;
      return m + at + 4;
    }
    at += 4 + ((l + 3) & ~3);
  }
  return NULL;
}

static int put_xor_addr(uint8_t *p, uint16_t type, const struct sockaddr_in *a) {
  wr16(p, type), wr16(p + 2, 8);
  p[4] = 0, p[5] = 1;
  wr16(p + 6, ntohs(a->sin_port) ^ (MAGIC >> 16));
  wr32(p + 8, ntohl(a->sin_addr.s_addr) ^ MAGIC);
  return 12;
}

static void get_xor_addr(const uint8_t *v, struct sockaddr_in *a) {
  a->sin_family = AF_INET;
  a->sin_port = htons(rd16(v + 2) ^ (MAGIC >> 16));
  a->sin_addr.s_addr = htonl(((uint32_t)rd16(v + 4) << 16 | rd16(v + 6)) ^ MAGIC);
}

// The answer to request `m` from `from` in `out`; its length (0: none).
static int answer(const uint8_t *m, int n, const struct sockaddr_in *from, uint8_t *out) {
  uint16_t type = rd16(m), method = type & 0x3eef;
  int at = 20, l;
  const uint8_t *v;
  struct alloc *a = &allocs[ntohs(from->sin_port)];
  uint16_t cls = 0x0100;  // success
  if (method == 0x003 && !attr(m, n, 0x0008, &l)) {
    cls = 0x0110;  // 401: ERROR-CODE, REALM, NONCE
    wr16(out + at, 0x0009), wr16(out + at + 2, 4), wr32(out + at + 4, 0x0401), at += 8;
    wr16(out + at, 0x0014), wr16(out + at + 2, 5), memcpy(out + at + 4, "bench\0\0\0", 8), at += 12;
    wr16(out + at, 0x0015), wr16(out + at + 2, 8), memcpy(out + at + 4, "00000000", 8), at += 12;
  } else if (method == 0x003) {
    if (a->fd < 0) {
      a->fd = udp_socket(0);
      a->client = *from;
      a->channel = 0;
      struct epoll_event ev = {.events = EPOLLIN | EPOLLET, .data.u32 = ntohs(from->sin_port)};
      epoll_ctl(ep, EPOLL_CTL_ADD, a->fd, &ev);
    }
    struct sockaddr_in r;
    socklen_t rl = sizeof r;
    getsockname(a->fd, (void *)&r, &rl);
    at += put_xor_addr(out + at, 0x0016, &r);
    at += put_xor_addr(out + at, 0x0020, from);
    wr16(out + at, 0x000d), wr16(out + at + 2, 4), wr32(out + at + 4, 600), at += 8;
  } else if (method == 0x004) {
    v = attr(m, n, 0x000d, &l);
    uint32_t life = v && l == 4 ? ((uint32_t)rd16(v) << 16 | rd16(v + 2)) : 600;
    if (life == 0 && a->fd >= 0) close(a->fd), a->fd = -1;  // the close leaves epoll too
    wr16(out + at, 0x000d), wr16(out + at + 2, 4), wr32(out + at + 4, life), at += 8;
  } else if (method == 0x008 || method == 0x009) {
    if ((v = attr(m, n, 0x0012, &l)) && l == 8) get_xor_addr(v, &a->peer);
    if (method == 0x009 && (v = attr(m, n, 0x000c, &l)) && l == 4) a->channel = rd16(v);
  } else if (method == 0x001) {
    at += put_xor_addr(out + at, 0x0020, from);
  } else {
    return 0;
  }
  wr16(out, method | cls), wr16(out + 2, at - 20);
  memcpy(out + 4, m + 4, 16);
  return at;
}

// Receive slots take 2048 B; 4 more let a Data indication's padding be read past a full one.
static uint8_t rbuf[BATCH][2048 + 4], sbuf[BATCH][256], hdr[BATCH][36];
static struct sockaddr_in names[BATCH];
static struct iovec riov[BATCH], tiov[BATCH][2];
static struct mmsghdr rx[BATCH], tx[BATCH];

static int recv_batch(int fd) {
  for (int j = 0; j < BATCH; j++) {
    riov[j] = (struct iovec){rbuf[j], 2048};
    rx[j].msg_hdr = (struct msghdr){.msg_name = &names[j], .msg_namelen = sizeof names[j],
                                    .msg_iov = &riov[j], .msg_iovlen = 1};
  }
  return recvmmsg(fd, rx, BATCH, MSG_DONTWAIT, NULL);
}

// sendmmsg until all `n` left (or the socket refuses one: dropped, as a full buffer drops).
static void send_all(int fd, struct mmsghdr *m, int n) {
  while (n > 0) {
    int r = sendmmsg(fd, m, n, 0);
    if (r <= 0) r = 1;  // skip the refused datagram
    m += r, n -= r;
  }
}

static void queue(int k, void *to, void *a, size_t al, void *b, size_t bl) {
  tiov[k][0] = (struct iovec){a, al};
  tiov[k][1] = (struct iovec){b, bl};
  tx[k].msg_hdr = (struct msghdr){.msg_name = to, .msg_namelen = sizeof(struct sockaddr_in),
                                  .msg_iov = tiov[k], .msg_iovlen = bl ? 2 : 1};
}

// Datagrams from clients: answers go back by the listener in one sendmmsg; runs of data for
// the same relay socket leave in one sendmmsg each.
static void from_clients(void) {
  int r;
  do {
    r = recv_batch(lfd);
    int na = 0, j = 0;
    int out_fd = -1, nout = 0;
    static struct mmsghdr ans[BATCH];
    static struct iovec aiov[BATCH];
    for (; j < r; j++) {
      uint8_t *m = rbuf[j];
      int n = rx[j].msg_len;
      struct alloc *a = &allocs[ntohs(names[j].sin_port)];
      int fd = -1;
      const uint8_t *data = NULL;
      int dl = 0;
      struct sockaddr_in *to = &a->peer;
      static struct sockaddr_in send_to[BATCH];
      if (n >= 4 && (m[0] & 0xc0) == 0x40) {  // ChannelData
        fd = a->fd, data = m + 4, dl = rd16(m + 2);
        if (dl > n - 4) fd = -1;
      } else if (n >= 20 && rd16(m) == 0x0016) {  // Send indication
        int l;
        const uint8_t *v = attr(m, n, 0x0012, &l);
        data = attr(m, n, 0x0013, &dl);
        if (v && l == 8 && data) {
          get_xor_addr(v, &send_to[j]);
          to = &send_to[j], fd = a->fd;
        }
      } else if (n >= 20 && (m[0] & 0xc0) == 0 && (rd16(m) & 0x0110) == 0) {  // request
        int len = answer(m, n, &names[j], sbuf[na]);
        if (len) {
          aiov[na] = (struct iovec){sbuf[na], len};
          ans[na].msg_hdr = (struct msghdr){.msg_name = &names[j], .msg_namelen = sizeof names[j],
                                            .msg_iov = &aiov[na], .msg_iovlen = 1};
          na++;
        }
      }
      if (fd != out_fd && nout) send_all(out_fd, tx, nout), nout = 0;
      if (fd >= 0) {
        out_fd = fd;
        queue(nout++, to, (void *)data, dl, NULL, 0);
      }
    }
    if (nout) send_all(out_fd, tx, nout);
    if (na) send_all(lfd, ans, na);
  } while (r == BATCH);
}

// Datagrams from peers on allocation `port`'s relay socket: framed for the client (a 4-byte
// ChannelData header, or a Data indication's header and XOR-PEER-ADDRESS), payload not copied.
static void from_peers(int port) {
  struct alloc *a = &allocs[port];
  int r;
  do {
    if (a->fd < 0) return;
    r = recv_batch(a->fd);
    for (int j = 0; j < r; j++) {
      int n = rx[j].msg_len, h;
      if (a->channel) {
        wr16(hdr[j], a->channel), wr16(hdr[j] + 2, n), h = 4;
      } else {
        int pad = (4 - (n & 3)) & 3;
        wr16(hdr[j], 0x0017), wr16(hdr[j] + 2, 12 + 4 + n + pad), wr32(hdr[j] + 4, MAGIC);
        memset(hdr[j] + 8, 0, 12);
        put_xor_addr(hdr[j] + 20, 0x0012, &names[j]);
        wr16(hdr[j] + 32, 0x0013), wr16(hdr[j] + 34, n), h = 36;
        n += pad;  // the padding bytes are whatever follows in the buffer
      }
      queue(j, &a->client, hdr[j], h, rbuf[j], n);
    }
    if (r > 0) send_all(lfd, tx, r);
  } while (r == BATCH);
}

int main(int argc, char **argv) {
  if (argc < 2) return 2;
  for (int i = 0; i < MAXA; i++) allocs[i].fd = -1;
  struct rlimit nofile;  // one descriptor per allocation: soft limit up to the hard one
  if (!getrlimit(RLIMIT_NOFILE, &nofile)) {
    nofile.rlim_cur = nofile.rlim_max;
    setrlimit(RLIMIT_NOFILE, &nofile);
  }
  signal(SIGTERM, on_term);
  signal(SIGINT, on_term);
  lfd = udp_socket(atoi(argv[1]));
  ep = epoll_create1(0);
  struct epoll_event ev = {.events = EPOLLIN | EPOLLET, .data.u32 = MAXA};
  epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
  while (!stop) {
    struct epoll_event evs[64];
    int n = epoll_wait(ep, evs, 64, 100);
    for (int e = 0; e < n; e++) {
      if (evs[e].data.u32 == MAXA)
        from_clients();
      else
        from_peers(evs[e].data.u32);
    }
  }
  return 0;
}
