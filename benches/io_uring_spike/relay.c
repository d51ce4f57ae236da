// Measurement spike (benches/README.md, "io_uring: measured, not adopted"; run.sh runs it):
// per-CPU cost of a trivial UDP relay (20 "clients" <-> 20 relay sockets <-> 1 echo peer, the
// shape of ferroturn's ChannelData echo scenario without TURN framing), readiness
// (epoll ET + recvmmsg + sendmmsg, as ferroturn's shard) against completion (io_uring:
// multishot recvmsg into a provided buffer ring, sendmsg SQEs submitted with the next wait).
//
//   relay epoll|uring SECS      relay for SECS after the first datagram; prints relayed
//                               datagrams and CPU seconds over [1 s, SECS - 1 s]
//   relay gen RATE SECS         paced clients (RATE datagrams/s in total) + echo peer
//   relay echo SECS             the echo peer alone (with ECHO=thread for gen)
#define _GNU_SOURCE
#include <errno.h>
#include <liburing.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define N 20
#define PORT_L 47000
#define PORT_R 47100
#define PORT_C 47200
#define PORT_E 47300
#define BATCH 32
#define PAYLOAD 100

static double now_s(clockid_t c) {
  struct timespec t;
  clock_gettime(c, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

static struct sockaddr_in addr(int port) {
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
  a.sin_addr.s_addr = htonl(0x7f000001);
  return a;
}

static int udp(int port) {
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
  int big = 4 << 20;
  setsockopt(s, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
  setsockopt(s, SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
  struct sockaddr_in a = addr(port);
  if (bind(s, (void *)&a, sizeof a)) {
    perror("bind");
    exit(1);
  }
  return s;
}

// recvmmsg headers for BATCH datagrams (the kernel rewrites the lengths on every call).
static void prep_rx(char bufs[][2048], struct sockaddr_in *names, struct iovec *iov,
                    struct mmsghdr *rx) {
  for (int j = 0; j < BATCH; j++) {
    iov[j] = (struct iovec){bufs[j], 2048};
    rx[j].msg_hdr = (struct msghdr){.msg_name = &names[j],
                                    .msg_namelen = sizeof names[j],
                                    .msg_iov = &iov[j],
                                    .msg_iovlen = 1};
  }
}

// fds[0] = listener, fds[1 + i] = relay socket i
static int fds[N + 1];
static struct sockaddr_in echo_addr, client_addr[N];
static long relayed, syscalls;
static double t_first, w_start, w_end, cpu0, cpu1;
static long rel0, rel1, sys0, sys1;
static int window_state;  // 0 waiting, 1 in window, 2 done

static void account(int n, double secs) {
  relayed += n;
  if (t_first == 0) {
    t_first = now_s(CLOCK_MONOTONIC);
    w_start = t_first + 1;
    w_end = t_first + secs - 1;
  }
}

static int check_window(void) {
  double t = now_s(CLOCK_MONOTONIC);
  if (window_state == 0 && t_first && t >= w_start) {
    window_state = 1;
    rel0 = relayed, sys0 = syscalls, cpu0 = now_s(CLOCK_THREAD_CPUTIME_ID);
  } else if (window_state == 1 && t >= w_end) {
    rel1 = relayed, sys1 = syscalls, cpu1 = now_s(CLOCK_THREAD_CPUTIME_ID);
    window_state = 2;
    return 1;
  }
  return 0;
}

// Where a datagram from `src` that arrived on socket k goes: (socket index, address).
static int route(int k, struct sockaddr_in *src, struct sockaddr_in **dst) {
  if (k == 0) {
    int i = ntohs(src->sin_port) - PORT_C;
    if (i < 0 || i >= N) return -1;
    *dst = &echo_addr;
    return 1 + i;
  }
  *dst = &client_addr[k - 1];
  return 0;
}

static void run_epoll(double secs) {
  int ep = epoll_create1(0);
  for (int k = 0; k <= N; k++) {
    struct epoll_event ev = {.events = EPOLLIN | EPOLLET, .data.u32 = k};
    epoll_ctl(ep, EPOLL_CTL_ADD, fds[k], &ev);
  }
  static char bufs[BATCH][2048];
  static struct sockaddr_in names[BATCH];
  static struct iovec iov[BATCH];
  static struct mmsghdr rx[BATCH], tx[BATCH];
  for (;;) {
    struct epoll_event evs[64];
    int n = epoll_wait(ep, evs, 64, 100);
    syscalls++;
    for (int e = 0; e < n; e++) {
      int k = evs[e].data.u32;
      int r;
      do {
        prep_rx(bufs, names, iov, rx);
        r = recvmmsg(fds[k], rx, BATCH, MSG_DONTWAIT, NULL);
        syscalls++;
        if (r <= 0) break;
        // Runs of datagrams leaving by the same socket go in one sendmmsg.
        int j = 0;
        while (j < r) {
          struct sockaddr_in *dst;
          int out = route(k, &names[j], &dst);
          int m = 0;
          for (; j < r; j++) {
            struct sockaddr_in *d2;
            if (route(k, &names[j], &d2) != out) break;
            iov[j].iov_len = rx[j].msg_len;
            tx[m].msg_hdr = (struct msghdr){.msg_name = d2,
                                            .msg_namelen = sizeof *d2,
                                            .msg_iov = &iov[j],
                                            .msg_iovlen = 1};
            m++;
          }
          if (out >= 0) {
            sendmmsg(fds[out], tx, m, 0);
            syscalls++;
          } else if (m == 0) {
            j++;
          }
        }
        account(r, secs);
      } while (r == BATCH);
    }
    if (check_window()) return;
  }
}

#define NBUF 1024
#define BUFSZ 2048
#define NSEND 4096

static void run_uring(double secs) {
  struct io_uring ring;
  struct io_uring_params p = {.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN};
  int rc = io_uring_queue_init_params(4096, &ring, &p);
  if (rc) {
    fprintf(stderr, "io_uring_queue_init_params: %s\n", strerror(-rc));
    exit(1);
  }
  struct io_uring_buf_ring *br;
  if (posix_memalign((void **)&br, 4096, NBUF * sizeof(struct io_uring_buf))) exit(1);
  struct io_uring_buf_reg reg = {.ring_addr = (unsigned long)br, .ring_entries = NBUF, .bgid = 0};
  rc = io_uring_register_buf_ring(&ring, &reg, 0);
  if (rc) {
    fprintf(stderr, "register_buf_ring: %s\n", strerror(-rc));
    exit(1);
  }
  static char bufs[NBUF][BUFSZ];
  io_uring_buf_ring_init(br);
  int mask = io_uring_buf_ring_mask(NBUF);
  for (int b = 0; b < NBUF; b++) io_uring_buf_ring_add(br, bufs[b], BUFSZ, b, mask, b);
  io_uring_buf_ring_advance(br, NBUF);
  static struct msghdr rhdr[N + 1];
  for (int k = 0; k <= N; k++) {
    rhdr[k] = (struct msghdr){.msg_namelen = sizeof(struct sockaddr_in)};
    struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
    io_uring_prep_recvmsg_multishot(sqe, fds[k], &rhdr[k], 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = 0;
    io_uring_sqe_set_data64(sqe, k);
  }
  // Send slots: the payload is copied out (100 B) so the receive buffer goes straight back;
  // sends complete inline on loopback, and a slot is reused NSEND sends later.
  static char sbuf[NSEND][BUFSZ];
  static struct iovec siov[NSEND];
  static struct msghdr smsg[NSEND];
  static struct sockaddr_in sdst[NSEND];
  unsigned long sn = 0;
  for (;;) {
    io_uring_submit_and_wait(&ring, 1);
    syscalls++;
    struct io_uring_cqe *cqe;
    unsigned head, seen = 0;
    int got = 0;
    io_uring_for_each_cqe(&ring, head, cqe) {
      seen++;
      uint64_t k = cqe->user_data;
      if (k >= (1u << 20)) {
        if (cqe->res < 0) fprintf(stderr, "send: %s\n", strerror(-cqe->res));
        continue;
      }
      if (!(cqe->flags & IORING_CQE_F_MORE)) {
        // multishot ended (ENOBUFS or other): re-arm
        struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
        io_uring_prep_recvmsg_multishot(sqe, fds[k], &rhdr[k], 0);
        sqe->flags |= IOSQE_BUFFER_SELECT;
        sqe->buf_group = 0;
        io_uring_sqe_set_data64(sqe, k);
      }
      if (cqe->res < 0 || !(cqe->flags & IORING_CQE_F_BUFFER)) continue;
      int bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
      struct io_uring_recvmsg_out *o = io_uring_recvmsg_validate(bufs[bid], cqe->res, &rhdr[k]);
      if (o) {
        struct sockaddr_in *src = io_uring_recvmsg_name(o);
        void *pl = io_uring_recvmsg_payload(o, &rhdr[k]);
        unsigned len = io_uring_recvmsg_payload_length(o, cqe->res, &rhdr[k]);
        struct sockaddr_in *dst;
        int out = route(k, src, &dst);
        if (out >= 0) {
          unsigned s = sn++ % NSEND;
          memcpy(sbuf[s], pl, len);
          sdst[s] = *dst;
          siov[s] = (struct iovec){sbuf[s], len};
          smsg[s] = (struct msghdr){.msg_name = &sdst[s],
                                    .msg_namelen = sizeof sdst[s],
                                    .msg_iov = &siov[s],
                                    .msg_iovlen = 1};
          struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
          io_uring_prep_sendmsg(sqe, fds[out], &smsg[s], 0);
          sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
          io_uring_sqe_set_data64(sqe, 1u << 20);
          got++;
        }
      }
      io_uring_buf_ring_add(br, bufs[bid], BUFSZ, bid, mask, 0);
      io_uring_buf_ring_advance(br, 1);
    }
    io_uring_cq_advance(&ring, seen);
    if (got) account(got, secs);
    if (check_window()) return;
  }
}

// The load: RATE datagrams/s from N client sockets (connected to the listener), sent in
// bursts once per tick (TICK_US, default 100 us) like ferroturn-bench, and an echo peer.
// BLOCK=1 (default): between ticks the generator sleeps in epoll_pwait2 on its sockets, so
// the relay's sends wake it as they would wake a real client; BLOCK=0: it spins.
static void run_gen(double rate, double secs) {
  // ECHO=thread: the echo peer is its own process (`relay echo`), as ferroturn-bench's is its
  // own thread, so the relay's sends to it wake a second sleeper.
  int own_echo = !(getenv("ECHO") && !strcmp(getenv("ECHO"), "thread"));
  int c[N], e = own_echo ? udp(PORT_E) : -1;
  struct sockaddr_in l = addr(PORT_L);
  int ep = epoll_create1(0);
  struct epoll_event ev = {.events = EPOLLIN, .data.u32 = N};
  if (own_echo) epoll_ctl(ep, EPOLL_CTL_ADD, e, &ev);
  for (int i = 0; i < N; i++) {
    c[i] = udp(PORT_C + i);
    connect(c[i], (void *)&l, sizeof l);
    ev.data.u32 = i;
    epoll_ctl(ep, EPOLL_CTL_ADD, c[i], &ev);
  }
  int block = getenv("BLOCK") ? atoi(getenv("BLOCK")) : 1;
  char pl[PAYLOAD] = {0};
  double start = now_s(CLOCK_MONOTONIC), next = start, gap = 1 / rate;
  double tick = getenv("TICK_US") ? atof(getenv("TICK_US")) / 1e6 : 100e-6, tick_next = start;
  long sent = 0, back = 0, k = 0;
  static char bufs[BATCH][2048];
  static struct sockaddr_in names[BATCH];
  static struct iovec iov[BATCH];
  static struct mmsghdr rx[BATCH];
  for (;;) {
    double t = now_s(CLOCK_MONOTONIC);
    if (t - start > secs) break;
    if (t >= tick_next) {
      while (tick_next <= t) tick_next += tick;
      while (next <= t) {
        send(c[k++ % N], pl, sizeof pl, MSG_DONTWAIT);
        sent++;
        next += gap;
      }
    }
    if (block) {
      double w = tick_next - now_s(CLOCK_MONOTONIC);
      struct timespec ts = {0, w > 0 ? (long)(w * 1e9) : 0};
      struct epoll_event evs[32];
      epoll_pwait2(ep, evs, 32, &ts, NULL);
    }
    prep_rx(bufs, names, iov, rx);
    int r = own_echo ? recvmmsg(e, rx, BATCH, MSG_DONTWAIT, NULL) : 0;
    for (int j = 0; j < r; j++)
      sendto(e, bufs[j], rx[j].msg_len, MSG_DONTWAIT, (void *)&names[j], sizeof names[j]);
    for (int i = 0; i < N; i++) {
      char b[2048];
      while (recv(c[i], b, sizeof b, MSG_DONTWAIT) > 0) back++;
    }
  }
  // The relay stops measuring (and relaying) 1 s before the generator stops.
  printf("gen: sent %ld at %.0f/s (%s), %ld came back\n", sent, rate, block ? "blocking" : "spinning",
         back);
}

// The echo peer on its own (ECHO=thread in the generator): blocking recvmmsg, like
// ferroturn-bench's echo thread.
static void run_echo(double secs) {
  int e = udp(PORT_E);
  int fl = 0;
  ioctl(e, FIONBIO, &fl);
  struct timeval tv = {0, 100000};
  setsockopt(e, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  static char bufs[BATCH][2048];
  static struct sockaddr_in names[BATCH];
  static struct iovec iov[BATCH];
  static struct mmsghdr rx[BATCH];
  double start = now_s(CLOCK_MONOTONIC);
  while (now_s(CLOCK_MONOTONIC) - start < secs) {
    prep_rx(bufs, names, iov, rx);
    int r = recvmmsg(e, rx, BATCH, MSG_WAITFORONE, NULL);
    for (int j = 0; j < r; j++) iov[j].iov_len = rx[j].msg_len;
    if (r > 0) sendmmsg(e, rx, r, 0);
  }
}

int main(int argc, char **argv) {
  if (argc < 3) return 2;
  if (!strcmp(argv[1], "echo")) {
    run_echo(atof(argv[2]));
    return 0;
  }
  if (!strcmp(argv[1], "gen")) {
    run_gen(atof(argv[2]), atof(argv[3]));
    return 0;
  }
  double secs = atof(argv[2]);
  echo_addr = addr(PORT_E);
  fds[0] = udp(PORT_L);
  for (int i = 0; i < N; i++) {
    fds[1 + i] = udp(PORT_R + i);
    client_addr[i] = addr(PORT_C + i);
  }
  if (!strcmp(argv[1], "epoll"))
    run_epoll(secs);
  else
    run_uring(secs);
  double cpu = cpu1 - cpu0;
  long rel = rel1 - rel0;
  printf("%s: relayed %ld in %.3f CPU-s over %.1f s: %.0f relayed/CPU-s, %.2f syscalls/datagram\n",
         argv[1], rel, cpu, w_end - w_start, rel / cpu, (double)(sys1 - sys0) / rel);
  return 0;
}
