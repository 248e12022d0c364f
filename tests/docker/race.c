/* race: the container side of tests/docker.rs, built static (gcc -static) and
 * imported as the only file of a local image (no registry).
 *
 *   race DST PORT SPORT0 ROUNDS BURST START_NS GAP_MS LINGER_S
 *
 * At wall-clock START_NS + r * GAP_MS (every container of the test is given
 * the same START_NS, and shares the host's clock), round r sends BURST UDP
 * datagrams to DST:PORT, the j-th from local port SPORT0 + r * BURST + j
 * (SO_REUSEADDR, a new socket each). Every container uses the same ports at
 * the same instant: MASQUERADE gives them all the node's address, and where
 * two allocate the same port before either is confirmed, the later one loses
 * at confirm (insert_failed). Prints "sent N failed F", then stays alive
 * LINGER_S seconds so that the tracer can still find its processes. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

static void until(long long t) {
    long long early = t - 300000; /* sleep to 300 us before, then spin */
    if (early > now_ns()) {
        struct timespec ts = {early / 1000000000LL, early % 1000000000LL};
        clock_nanosleep(CLOCK_REALTIME, TIMER_ABSTIME, &ts, NULL);
    }
    while (now_ns() < t)
        ;
}

int main(int argc, char **argv) {
    if (argc != 9) {
        fprintf(stderr, "usage: race DST PORT SPORT0 ROUNDS BURST START_NS GAP_MS LINGER_S\n");
        return 2;
    }
    struct sockaddr_in dst;
    memset(&dst, 0, sizeof dst);
    dst.sin_family = AF_INET;
    dst.sin_port = htons(atoi(argv[2]));
    if (inet_pton(AF_INET, argv[1], &dst.sin_addr) != 1) {
        fprintf(stderr, "race: bad address %s\n", argv[1]);
        return 2;
    }
    int sport0 = atoi(argv[3]), rounds = atoi(argv[4]), burst = atoi(argv[5]);
    long long start = atoll(argv[6]), gap = atoll(argv[7]) * 1000000LL;
    int sent = 0, failed = 0, one = 1;
    for (int r = 0; r < rounds; r++) {
        until(start + r * gap);
        for (int j = 0; j < burst; j++) {
            int s = socket(AF_INET, SOCK_DGRAM, 0);
            struct sockaddr_in me;
            memset(&me, 0, sizeof me);
            me.sin_family = AF_INET;
            me.sin_port = htons(sport0 + r * burst + j);
            if (s < 0 || setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) ||
                bind(s, (struct sockaddr *)&me, sizeof me) ||
                sendto(s, "x", 1, 0, (struct sockaddr *)&dst, sizeof dst) != 1)
                failed++;
            else
                sent++;
            if (s >= 0)
                close(s);
        }
    }
    printf("sent %d failed %d\n", sent, failed);
    fflush(stdout);
    sleep(atoi(argv[8]));
    return 0;
}
