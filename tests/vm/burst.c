/* burst: the in-VM traffic helper of the VM matrix (tests/vm/matrix).
 * TCG runs a guest ~30x slower than the host, so the traffic is compiled, not
 * scripted.
 *
 *   burst listen IP PORT          listen with a deep backlog and never accept:
 *                                 the kernel completes every handshake; a UDP
 *                                 socket bound to the same IP:PORT sinks
 *                                 datagrams.
 *   burst connect IP PORT N SECS [HOLD]
 *                                 N non-blocking connects at once (each its own
 *                                 socket, so its own source port), wait up to
 *                                 SECS, print "connected C failed F pending P",
 *                                 keep the sockets open HOLD more seconds.
 *   burst forge IP PORT DELAY      accept one connection on IP:PORT, wait DELAY
 *                                 seconds, then send its peer (through the NAT)
 *                                 one forged segment with SEQ far over the
 *                                 window ("SEQ is over upper bound"): conntrack
 *                                 calls it INVALID, it escapes de-NAT and the
 *                                 node answers it with a RST. The real seq/ack
 *                                 come from TCP_REPAIR. Prints what it sent.
 *   burst udp IP PORT SPORT SRC... one UDP socket per SRC address, each bound to
 *                                 SRC:SPORT (the same source port), then one
 *                                 datagram from each to IP:PORT in a tight loop:
 *                                 through a NAT to one address:port, every
 *                                 datagram after the first clashes at confirm.
 * IP and SRC may be IPv4 or IPv6 (forge: IPv4 only).
 * Built static (gcc -static) so the initramfs needs no libraries for it. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static struct sockaddr_in addr(const char *ip, const char *port) {
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons(atoi(port));
    if (inet_pton(AF_INET, ip, &a.sin_addr) != 1) {
        fprintf(stderr, "burst: bad address %s\n", ip);
        exit(2);
    }
    return a;
}

/* IPv4 or IPv6, by what the text parses as. */
struct anyaddr {
    struct sockaddr_storage ss;
    socklen_t len;
    int family;
};

static struct anyaddr anyaddr(const char *ip, int port) {
    struct anyaddr a;
    memset(&a, 0, sizeof a);
    struct sockaddr_in *v4 = (struct sockaddr_in *)&a.ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&a.ss;
    if (inet_pton(AF_INET, ip, &v4->sin_addr) == 1) {
        v4->sin_family = a.family = AF_INET;
        v4->sin_port = htons(port);
        a.len = sizeof *v4;
    } else if (inet_pton(AF_INET6, ip, &v6->sin6_addr) == 1) {
        v6->sin6_family = a.family = AF_INET6;
        v6->sin6_port = htons(port);
        a.len = sizeof *v6;
    } else {
        fprintf(stderr, "burst: bad address %s\n", ip);
        exit(2);
    }
    return a;
}

static int udp_burst(const char *ip, int port, int sport, int n, char **src) {
    struct anyaddr dst = anyaddr(ip, port);
    int *fd = calloc(n, sizeof *fd), one = 1, sent = 0;
    for (int i = 0; i < n; i++) {
        struct anyaddr s = anyaddr(src[i], sport);
        fd[i] = socket(s.family, SOCK_DGRAM, 0);
        setsockopt(fd[i], SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (fd[i] < 0 || bind(fd[i], (struct sockaddr *)&s.ss, s.len) ||
            connect(fd[i], (struct sockaddr *)&dst.ss, dst.len)) {
            fprintf(stderr, "burst udp: %s: %s\n", src[i], strerror(errno));
            return 2;
        }
    }
    for (int i = 0; i < n; i++) /* all at once: none confirmed before the others */
        if (send(fd[i], "burst", 5, 0) == 5)
            sent++;
    printf("udp sent %d of %d from port %d\n", sent, n, sport);
    fflush(stdout);
    usleep(200000);
    return 0;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static unsigned short csum(const void *p, int len, unsigned sum) {
    const unsigned short *w = p;
    for (; len > 1; len -= 2)
        sum += *w++;
    if (len)
        sum += *(const unsigned char *)w;
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return ~sum;
}

static unsigned queue_seq(int s, int q) {
    unsigned v = 0;
    socklen_t l = sizeof v;
    if (setsockopt(s, IPPROTO_TCP, TCP_REPAIR_QUEUE, &q, sizeof q) ||
        getsockopt(s, IPPROTO_TCP, TCP_QUEUE_SEQ, &v, &l)) {
        perror("burst forge: TCP_QUEUE_SEQ");
        exit(2);
    }
    return v;
}

static int forge(const char *ip, const char *port, double delay) {
    struct sockaddr_in a = addr(ip, port), peer;
    socklen_t pl = sizeof peer;
    int s = socket(AF_INET, SOCK_STREAM, 0), one = 1, off = 0;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 16)) {
        perror("burst forge: listen");
        return 2;
    }
    int c = accept(s, (struct sockaddr *)&peer, &pl);
    if (c < 0) {
        perror("burst forge: accept");
        return 2;
    }
    usleep((useconds_t)(delay * 1e6));
    if (setsockopt(c, IPPROTO_TCP, TCP_REPAIR, &one, sizeof one)) {
        perror("burst forge: TCP_REPAIR");
        return 2;
    }
    unsigned snd = queue_seq(c, TCP_SEND_QUEUE), rcv = queue_seq(c, TCP_RECV_QUEUE);
    setsockopt(c, IPPROTO_TCP, TCP_REPAIR, &off, sizeof off);

    struct {
        struct iphdr ip;
        struct tcphdr tcp;
    } pkt;
    memset(&pkt, 0, sizeof pkt);
    pkt.ip.version = 4;
    pkt.ip.ihl = 5;
    pkt.ip.ttl = 64;
    pkt.ip.protocol = IPPROTO_TCP;
    pkt.ip.tot_len = htons(sizeof pkt);
    pkt.ip.saddr = a.sin_addr.s_addr;
    pkt.ip.daddr = peer.sin_addr.s_addr;
    pkt.ip.check = csum(&pkt.ip, sizeof pkt.ip, 0);
    pkt.tcp.source = a.sin_port;
    pkt.tcp.dest = peer.sin_port;
    pkt.tcp.seq = htonl(snd + 0x40000000u); /* far over td_maxend */
    pkt.tcp.ack_seq = htonl(rcv);
    pkt.tcp.doff = 5;
    pkt.tcp.ack = 1;
    pkt.tcp.window = htons(502);
    struct {
        unsigned saddr, daddr;
        unsigned char zero, proto;
        unsigned short len;
    } ph = {pkt.ip.saddr, pkt.ip.daddr, 0, IPPROTO_TCP, htons(sizeof pkt.tcp)};
    unsigned sum = ~csum(&ph, sizeof ph, 0) & 0xffff;
    pkt.tcp.check = csum(&pkt.tcp, sizeof pkt.tcp, sum);

    int r = socket(AF_INET, SOCK_RAW, IPPROTO_RAW);
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_addr = peer.sin_addr};
    if (r < 0 || sendto(r, &pkt, sizeof pkt, 0, (struct sockaddr *)&to, sizeof to) != sizeof pkt) {
        perror("burst forge: sendto");
        return 2;
    }
    char pa[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &peer.sin_addr, pa, sizeof pa);
    printf("forged seq %u (snd_nxt %u + 2^30) ack %u to %s:%u\n", snd + 0x40000000u, snd, rcv, pa,
           ntohs(peer.sin_port));
    fflush(stdout);
    sleep(2);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 5 && !strcmp(argv[1], "forge"))
        return forge(argv[2], argv[3], atof(argv[4]));
    if (argc >= 6 && !strcmp(argv[1], "udp"))
        return udp_burst(argv[2], atoi(argv[3]), atoi(argv[4]), argc - 5, argv + 5);
    if (argc == 4 && !strcmp(argv[1], "listen")) {
        struct anyaddr a = anyaddr(argv[2], atoi(argv[3]));
        int s = socket(a.family, SOCK_STREAM, 0), one = 1;
        int u = socket(a.family, SOCK_DGRAM, 0);
        setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (s < 0 || bind(s, (struct sockaddr *)&a.ss, a.len) || listen(s, 4096)) {
            perror("burst listen");
            return 2;
        }
        if (u < 0 || bind(u, (struct sockaddr *)&a.ss, a.len)) {
            perror("burst listen: udp");
            return 2;
        }
        for (;;) { /* drain the UDP sink */
            char b[64];
            if (recv(u, b, sizeof b, 0) < 0 && errno != EINTR)
                pause();
        }
    }
    if ((argc == 6 || argc == 7) && !strcmp(argv[1], "connect")) {
        struct anyaddr a = anyaddr(argv[2], atoi(argv[3]));
        int n = atoi(argv[4]);
        double secs = atof(argv[5]);
        if (n < 1 || n > 1000) {
            fprintf(stderr, "burst: N must be 1..1000\n");
            return 2;
        }
        struct pollfd *p = calloc(n, sizeof *p);
        int connected = 0, failed = 0, pending = 0;
        for (int i = 0; i < n; i++) {
            int s = socket(a.family, SOCK_STREAM | SOCK_NONBLOCK, 0);
            if (s < 0) {
                perror("socket");
                return 2;
            }
            p[i].fd = s;
            p[i].events = POLLOUT;
            if (connect(s, (struct sockaddr *)&a.ss, a.len) == 0) {
                connected++;
                p[i].fd = -1;
            } else if (errno != EINPROGRESS) {
                failed++;
                p[i].fd = -1;
            } else {
                pending++;
            }
        }
        double end = now() + secs;
        while (pending > 0 && now() < end) {
            int ms = (int)((end - now()) * 1000) + 1;
            if (poll(p, n, ms) <= 0)
                continue;
            for (int i = 0; i < n; i++) {
                if (p[i].fd < 0 || !p[i].revents)
                    continue;
                int err = 0;
                socklen_t l = sizeof err;
                getsockopt(p[i].fd, SOL_SOCKET, SO_ERROR, &err, &l);
                if (err)
                    failed++;
                else
                    connected++;
                pending--;
                p[i].fd = -1; /* keep the socket open: the winner's ct stays */
            }
        }
        printf("connected %d failed %d pending %d\n", connected, failed, pending);
        fflush(stdout);
        if (argc == 7)
            usleep((useconds_t)(atof(argv[6]) * 1e6));
        return 0;
    }
    fprintf(stderr, "usage: burst listen IP PORT | burst connect IP PORT N SECS [HOLD] | burst forge IP PORT DELAY | burst udp IP PORT SPORT SRC...\n");
    return 2;
}
