/* burst: the in-VM traffic helper of the VM matrix (tests/vm/run-matrix.sh).
 * TCG runs a guest ~30x slower than the host, so the traffic is compiled, not
 * scripted.
 *
 *   burst listen IP PORT          listen with a deep backlog and never accept:
 *                                 the kernel completes every handshake.
 *   burst connect IP PORT N SECS  N non-blocking connects at once (each its own
 *                                 socket, so its own source port), wait up to
 *                                 SECS, print "connected C failed F pending P".
 * Built static (gcc -static) so the initramfs needs no libraries for it. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
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

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc == 4 && !strcmp(argv[1], "listen")) {
        struct sockaddr_in a = addr(argv[2], argv[3]);
        int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
        setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 4096)) {
            perror("burst listen");
            return 2;
        }
        for (;;)
            pause();
    }
    if (argc == 6 && !strcmp(argv[1], "connect")) {
        struct sockaddr_in a = addr(argv[2], argv[3]);
        int n = atoi(argv[4]);
        double secs = atof(argv[5]);
        if (n < 1 || n > 1000) {
            fprintf(stderr, "burst: N must be 1..1000\n");
            return 2;
        }
        struct pollfd *p = calloc(n, sizeof *p);
        int connected = 0, failed = 0, pending = 0;
        for (int i = 0; i < n; i++) {
            int s = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
            if (s < 0) {
                perror("socket");
                return 2;
            }
            p[i].fd = s;
            p[i].events = POLLOUT;
            if (connect(s, (struct sockaddr *)&a, sizeof a) == 0) {
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
        return 0;
    }
    fprintf(stderr, "usage: burst listen IP PORT | burst connect IP PORT N SECS\n");
    return 2;
}
