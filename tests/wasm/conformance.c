/* WASI preview 1 behaviours spear must get right; each mode checks one area and exits
 * with a distinct code on any mismatch, so a test sees exactly what broke. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static int args_mode(int argc, char **argv) {
    printf("argc=%d\n", argc);
    for (int i = 0; i < argc; i++) printf("argv[%d]=%s\n", i, argv[i]);
    return 0;
}

static int env_mode(void) {
    extern char **environ;
    for (char **e = environ; *e; e++) printf("%s\n", *e);
    return 0;
}

static int files_mode(const char *dir) {
    char path[512];
    snprintf(path, sizeof path, "%s/out.txt", dir);
    FILE *f = fopen(path, "w");
    if (!f) { perror("fopen w"); return 10; }
    fputs("written by the guest\n", f);
    fclose(f);
    f = fopen(path, "r");
    if (!f) { perror("fopen r"); return 11; }
    char buf[64] = {0};
    if (!fgets(buf, sizeof buf, f)) return 12;
    fclose(f);
    if (strcmp(buf, "written by the guest\n") != 0) return 13;
    snprintf(path, sizeof path, "%s/in.txt", dir);
    f = fopen(path, "r");
    if (!f) { perror("fopen in.txt"); return 14; }
    if (!fgets(buf, sizeof buf, f)) return 15;
    fclose(f);
    printf("in.txt: %s", buf);
    char sub[512];
    snprintf(sub, sizeof sub, "%s/sub", dir);
    if (mkdir(sub, 0755) != 0 && errno != EEXIST) { perror("mkdir"); return 16; }
    char moved[512];
    snprintf(path, sizeof path, "%s/out.txt", dir);
    snprintf(moved, sizeof moved, "%s/sub/moved.txt", dir);
    if (rename(path, moved) != 0) { perror("rename"); return 17; }
    struct stat st;
    if (stat(moved, &st) != 0 || st.st_size != 21) return 18;
    DIR *d = opendir(dir);
    if (!d) return 19;
    int entries = 0;
    struct dirent *de;
    while ((de = readdir(d))) if (de->d_name[0] != '.') entries++;
    closedir(d);
    printf("entries=%d\n", entries);
    /* Escaping the preopen must fail. */
    if (open("/etc/passwd", O_RDONLY) >= 0) return 20;
    snprintf(path, sizeof path, "%s/../../../../etc/passwd", dir);
    if (open(path, O_RDONLY) >= 0) return 21;
    printf("files ok\n");
    return 0;
}

static int clocks_mode(void) {
    struct timespec a, b, r;
    if (clock_gettime(CLOCK_REALTIME, &r) != 0) return 30;
    if (r.tv_sec < 1600000000) return 31; /* after 2020 */
    if (clock_gettime(CLOCK_MONOTONIC, &a) != 0) return 32;
    struct timespec nap = {0, 20 * 1000 * 1000};
    nanosleep(&nap, NULL);
    if (clock_gettime(CLOCK_MONOTONIC, &b) != 0) return 33;
    long long ns = (b.tv_sec - a.tv_sec) * 1000000000LL + (b.tv_nsec - a.tv_nsec);
    if (ns < 15 * 1000 * 1000) return 34;
    printf("clocks ok\n");
    return 0;
}

static int stdin_mode(void) {
    char buf[256];
    size_t n = fread(buf, 1, sizeof buf - 1, stdin);
    buf[n] = 0;
    for (size_t i = 0; i < n; i++) if (buf[i] >= 'a' && buf[i] <= 'z') buf[i] -= 32;
    fputs(buf, stdout);
    return 0;
}

static int stream_mode(int count) {
    for (int i = 0; i < count; i++) {
        printf("line %d\n", i);
        fflush(stdout);
        fprintf(stderr, "err %d\n", i);
        struct timespec nap = {0, 50 * 1000 * 1000};
        nanosleep(&nap, NULL);
    }
    return 0;
}

static void *volatile keep[4096]; /* stops the compiler from eliding the allocations */

static int grow_mode(void) {
    for (size_t total = 0; total < 4096; total++) {
        char *p = malloc(1 << 20);
        if (!p) { printf("malloc failed after %zu MiB\n", total); return 0; }
        p[0] = 1;
        keep[total] = p;
    }
    return 4;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    const char *mode = argv[1];
    if (!strcmp(mode, "args")) return args_mode(argc, argv);
    if (!strcmp(mode, "env")) return env_mode();
    if (!strcmp(mode, "files")) return files_mode(argc > 2 ? argv[2] : "/data");
    if (!strcmp(mode, "clocks")) return clocks_mode();
    if (!strcmp(mode, "stdin")) return stdin_mode();
    if (!strcmp(mode, "stream")) return stream_mode(argc > 2 ? atoi(argv[2]) : 3);
    if (!strcmp(mode, "exit")) return atoi(argv[2]);
    if (!strcmp(mode, "loop")) { volatile unsigned long x = 0; for (;;) x++; }
    if (!strcmp(mode, "trap")) __builtin_trap();
    if (!strcmp(mode, "grow")) return grow_mode();
    return 3;
}
