/*
 * weavewait: the first program of every container the weavepy proxy starts.
 *
 * It waits until the container's weave interface (ethwe) is up -- weavepy adds
 * the addresses before it sets the link up, so "up" means "addressed" -- and
 * then execs the container's real entrypoint and command (argv[1:], looked up
 * in PATH), which becomes PID 1 with the environment unchanged.
 *
 * Static, no libc needed at run time: it must work in images that hold
 * nothing but one static binary.  No timeout: a container that is never
 * attached never runs, rather than running off the network.
 */
#include <errno.h>
#include <net/if.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int ethwe_up(int sock) {
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strncpy(ifr.ifr_name, "ethwe", IFNAMSIZ - 1);
    if (ioctl(sock, SIOCGIFFLAGS, &ifr) < 0)
        return 0;
    return (ifr.ifr_flags & IFF_UP) != 0;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "No command specified\n");
        return 1;
    }
    int sock = socket(AF_INET, SOCK_DGRAM, 0);
    if (sock < 0) {
        perror("weavewait: socket");
        return 1;
    }
    struct timespec pause = {0, 2 * 1000 * 1000}; /* 2 ms */
    while (!ethwe_up(sock))
        nanosleep(&pause, NULL);
    close(sock);
    execvp(argv[1], argv + 1);
    fprintf(stderr, "exec: \"%s\": %s\n", argv[1],
            errno == ENOENT ? "executable file not found in $PATH" : strerror(errno));
    return 1;
}
