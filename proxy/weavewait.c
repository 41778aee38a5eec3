/*
 * weavewait: the first program of every container the weavepy proxy starts.
 *
 * It waits until the container's weave interface (ethwe) is up -- weavepy adds
 * the addresses and rewrites /etc/hosts before it sets the link up, so "up"
 * means "attached" -- and then execs the container's real entrypoint and
 * command (argv[1:]), which becomes PID 1 with the environment unchanged.
 *
 * The command is found and started as runc (1.1, built with Go 1.19) does:
 * Go's exec.LookPath, an execute-access check, then execve.  When that fails
 * it says so in runc's words and exits with the code `docker run` would have
 * given (the CLI maps runc's message: 127 not found, 126 not executable, 125
 * anything else before the start; 1 for an execve failure after it, which runc
 * prints from inside the container).  In front of a `docker exec` (not the
 * container's first process) every failure is 126, as dockerd gives for execs.
 *
 * Static, no libc needed at run time: it must work in images that hold
 * nothing but one static binary.  No timeout: a container that is never
 * attached never runs, rather than running off the network.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static int ethwe_up(int sock) {
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strncpy(ifr.ifr_name, "ethwe", IFNAMSIZ - 1);
    if (ioctl(sock, SIOCGIFFLAGS, &ifr) < 0)
        return 0;
    return (ifr.ifr_flags & IFF_UP) != 0;
}

/* Go's wording of an errno: glibc's, with the first letter in lower case. */
static const char *go_error(int err) {
    static char text[256];
    snprintf(text, sizeof text, "%s", strerror(err));
    text[0] = (char)tolower((unsigned char)text[0]);
    return text;
}

/* Go 1.19's findExecutable: a file, not a directory, with an execute bit; errno on failure. */
static int find_executable(const char *file, int *stat_failed) {
    struct stat st;
    if (stat(file, &st) < 0) {
        *stat_failed = 1;
        return errno;
    }
    *stat_failed = 0;
    if (!S_ISDIR(st.st_mode) && (st.st_mode & 0111))
        return 0;
    return EACCES;
}

/*
 * Go's exec.LookPath: a name with a slash is used as it is, any other is looked
 * for along $PATH ("" meaning "."); a match found relative to "." is refused
 * (Go 1.19's ErrDot).  Writes the path to run into found, or runc's message
 * into message and returns -1.
 */
static int look_path(const char *file, char *found, size_t size, char *message, size_t msize) {
    int stat_failed;
    if (strchr(file, '/')) {
        int err = find_executable(file, &stat_failed);
        if (err == 0) {
            snprintf(found, size, "%s", file);
            return 0;
        }
        if (stat_failed)
            snprintf(message, msize, "exec: \"%s\": stat %s: %s", file, file, go_error(err));
        else
            snprintf(message, msize, "exec: \"%s\": %s", file, go_error(err));
        return -1;
    }
    const char *path = getenv("PATH");
    for (const char *dir = path; path && *path && dir; ) {
        const char *end = strchr(dir, ':');
        size_t len = end ? (size_t)(end - dir) : strlen(dir);
        while (len > 1 && dir[len - 1] == '/')
            len--; /* as filepath.Join cleans it */
        if (len == 0)
            snprintf(found, size, "./%s", file);
        else
            snprintf(found, size, "%.*s/%s", (int)len, dir, file);
        if (find_executable(found, &stat_failed) == 0) {
            if (found[0] != '/') {
                snprintf(message, msize, "exec: \"%s\": cannot run executable found relative to current directory",
                         file);
                return -1;
            }
            return 0;
        }
        dir = end ? end + 1 : NULL;
    }
    snprintf(message, msize, "exec: \"%s\": executable file not found in $PATH", file);
    return -1;
}

/* The exit code the docker CLI gives when runc refuses to start a command with this message. */
static int start_failure_code(const char *message) {
    if (strstr(message, "executable file not found") || strstr(message, "no such file or directory"))
        return 127;
    if (strstr(message, "permission denied") || strstr(message, "is a directory"))
        return 126;
    return 125;
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

    /* an exec'd process has no parent inside the container's PID namespace, and is not PID 1 */
    int is_exec = getpid() != 1 && getppid() == 0;
    char found[PATH_MAX + NAME_MAX + 2], message[2 * PATH_MAX + 256];
    if (look_path(argv[1], found, sizeof found, message, sizeof message) < 0) {
        fprintf(stderr, "%s\n", message);
        return is_exec ? 126 : start_failure_code(message);
    }
    if (faccessat(AT_FDCWD, found, X_OK, AT_EACCESS) < 0) {
        snprintf(message, sizeof message, "exec %s: %s", found, go_error(errno));
        fprintf(stderr, "%s\n", message);
        return is_exec ? 126 : start_failure_code(message);
    }
    execve(found, argv + 1, environ);
    fprintf(stderr, "exec %s: %s\n", found, go_error(errno));
    return is_exec ? 126 : 1;
}
