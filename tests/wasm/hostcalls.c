/* A test agent for the spear hostcalls: `hostcalls.wasm MODE [ARGS]` (see each mode). */
#include <spear.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(cond) do { if (!(cond)) { fprintf(stderr, "check failed at line %d\n", __LINE__); return __LINE__ % 200 + 1; } } while (0)

static int faults(void) {
    /* Pointers past the end of memory, and absurd lengths: errors, never a crash. */
    const char *far = (const char *)0xFFFFFF00u;
    uint32_t cap = 16;
    char buf[16];
    CHECK(spear_obj_put(far, 4, "v", 1, SPEAR_ANY_VERSION, 0) == -EFAULT);
    CHECK(spear_obj_put("k", 1, far, 200, SPEAR_ANY_VERSION, 0) == -EFAULT);
    CHECK(spear_obj_put("k", 1, "v", 0x7FFFFFFF, SPEAR_ANY_VERSION, 0) == -EFAULT);
    CHECK(spear_obj_put("k", 0xFFFFFFFFu, "v", 1, SPEAR_ANY_VERSION, 0) == -EINVAL);
    CHECK(spear_obj_put("", 0, "v", 1, SPEAR_ANY_VERSION, 0) == -EINVAL);
    CHECK(spear_obj_put("k", 1, "v", 1, -7, 0) == -EINVAL);
    CHECK(spear_obj_put("k", 1, "v", 1, SPEAR_ANY_VERSION, (uint64_t *)far) == -EFAULT);
    CHECK(spear_obj_get("k", 1, buf, (uint32_t *)far, 0) == -EFAULT);
    CHECK(spear_obj_get("k", 1, (void *)far, &cap, 0) == -EFAULT);
    CHECK(spear_obj_get("\xff\xfe", 2, buf, &cap, 0) == -EINVAL); /* not UTF-8 */
    CHECK(spear_obj_info("k", 1, (spear_obj_info_t *)far) == -EFAULT);
    CHECK(spear_obj_add_ref(far, 1) == -EFAULT);
    CHECK(spear_log(SPEAR_LOG_INFO, far, 100) == -EFAULT);
    CHECK(spear_log(77, "x", 1) == -EINVAL);
    CHECK(spear_result_set(far, 500) == -EFAULT);
    CHECK(spear_stream_read(9999, buf, &cap) == -EBADF);
    CHECK(spear_stream_write(9999, "x", 1) == -EBADF);
    CHECK(spear_close(9999) == -EBADF);
    int32_t h = spear_stream_caller();
    CHECK(h > 0);
    CHECK(spear_stream_caller() == h);
    CHECK(spear_stream_read(h, buf, (uint32_t *)far) == -EFAULT);
    CHECK(spear_stream_write(h, far, 300) == -EFAULT);
    CHECK(spear_poll((spear_pollfd_t *)far, 4, 0) == -EFAULT);
    CHECK(spear_poll(0, 100000, 0) == -EINVAL);
    CHECK(spear_time_now(5, (uint64_t *)buf) == -EINVAL);
    CHECK(spear_time_now(0, (uint64_t *)far) == -EFAULT);
    CHECK(spear_sleep(-1) == -EINVAL);
    /* Still perfectly usable afterwards. */
    uint64_t v = 0;
    CHECK(spear_obj_put("k", 1, "v", 1, SPEAR_ANY_VERSION, &v) == 0 && v > 0);
    return 0;
}

static int enospc(const char *key) {
    char small[4];
    uint32_t len = sizeof small;
    uint64_t version = 0;
    int32_t r = spear_get_str(key, small, &len, &version);
    CHECK(r == -ENOSPC);
    CHECK(version > 0);
    char *big = malloc(len);
    uint32_t need = len;
    r = spear_get_str(key, big, &len, NULL);
    CHECK(r == (int32_t)need && len == need);
    fwrite(big, 1, len, stdout);
    return 0;
}

static int put(const char *key, const char *value, long long expected) {
    uint64_t version = 0;
    int32_t r = spear_put_str(key, value, (uint32_t)strlen(value), expected, &version);
    printf("%d %llu\n", r, (unsigned long long)version);
    return 0;
}

static int info(const char *key) {
    spear_obj_info_t i;
    int32_t r = spear_obj_info(key, (uint32_t)strlen(key), &i);
    if (r < 0) { printf("%d\n", r); return 0; }
    printf("%llu %llu %u %u\n", (unsigned long long)i.size, (unsigned long long)i.version,
           i.refcount, i.pinned);
    return 0;
}

static int list(const char *prefix) {
    char buf[4096];
    uint32_t len = sizeof buf;
    int32_t n = spear_obj_list(prefix, (uint32_t)strlen(prefix), buf, &len);
    CHECK(n >= 0);
    for (uint32_t i = 0; i < len; i++) putchar(buf[i] ? buf[i] : '\n');
    return 0;
}

/* Hold a reference (and pin/unpin, delete attempts) while the caller keeps the input open. */
static int hold(const char *key) {
    CHECK(spear_obj_add_ref(key, (uint32_t)strlen(key)) == 1);
    CHECK(spear_obj_delete(key, (uint32_t)strlen(key), SPEAR_ANY_VERSION) == -EBUSY);
    int32_t h = spear_stream_caller();
    CHECK(spear_stream_send(h, "holding", 7) == 7);
    char buf[64];
    uint32_t len = sizeof buf;
    while (spear_stream_recv(h, buf, &len) >= 0) len = sizeof buf;
    return 0;
}

/* Write N messages without waiting, counting how often the queue was full. */
static int flood(int n) {
    int32_t h = spear_stream_caller();
    int eagain = 0;
    char msg[32];
    for (int i = 0; i < n; i++) {
        int m = snprintf(msg, sizeof msg, "m%d", i);
        int32_t r;
        while ((r = spear_stream_write(h, msg, (uint32_t)m)) == -EAGAIN) {
            eagain++;
            CHECK(spear_wait(h, SPEAR_POLLOUT, -1) & SPEAR_POLLOUT);
        }
        CHECK(r == m);
    }
    printf("eagain %d\n", eagain > 0);
    return 0;
}

static int poll_timeout(void) {
    int32_t h = spear_stream_caller();
    spear_pollfd_t fd = {h, SPEAR_POLLIN, 0};
    int32_t r = spear_poll(&fd, 1, 30);
    CHECK(r == 0 && fd.revents == 0);
    char buf[8];
    uint32_t len = sizeof buf;
    CHECK(spear_stream_read(h, buf, &len) == -EAGAIN);
    fd.events = SPEAR_POLLOUT;
    CHECK(spear_poll(&fd, 1, -1) == 1 && (fd.revents & SPEAR_POLLOUT));
    uint64_t t0, t1;
    CHECK(spear_time_now(SPEAR_CLOCK_MONOTONIC, &t0) == 0);
    CHECK(spear_sleep(1000000) == 0); /* 1 ms */
    CHECK(spear_time_now(SPEAR_CLOCK_MONOTONIC, &t1) == 0 && t1 > t0);
    printf("ok\n");
    return 0;
}

static int detached(void) {
    /* Run without a caller: the input has ended, nobody reads the output. */
    int32_t h = spear_stream_caller();
    char buf[8];
    uint32_t len = sizeof buf;
    CHECK(spear_stream_read(h, buf, &len) == -EPIPE);
    CHECK(spear_stream_write(h, "x", 1) == -EPIPE);
    spear_pollfd_t fd = {h, SPEAR_POLLIN | SPEAR_POLLOUT, 0};
    CHECK(spear_poll(&fd, 1, -1) == 1 && (fd.revents & SPEAR_POLLHUP) && (fd.revents & SPEAR_POLLERR));
    printf("ok\n");
    return 0;
}

int main(int argc, char **argv) {
    if (spear_check_abi() != 0) return 70;
    const char *mode = argc > 1 ? argv[1] : "";
    if (!strcmp(mode, "faults")) return faults();
    if (!strcmp(mode, "enospc")) return enospc(argv[2]);
    if (!strcmp(mode, "put")) return put(argv[2], argv[3], atoll(argv[4]));
    if (!strcmp(mode, "info")) return info(argv[2]);
    if (!strcmp(mode, "list")) return list(argc > 2 ? argv[2] : "");
    if (!strcmp(mode, "hold")) return hold(argv[2]);
    if (!strcmp(mode, "flood")) return flood(atoi(argv[2]));
    if (!strcmp(mode, "poll")) return poll_timeout();
    if (!strcmp(mode, "detached")) return detached();
    if (!strcmp(mode, "result")) { printf("ignored stdout\n"); return spear_result_set(argv[2], (uint32_t)strlen(argv[2])) ? 3 : 0; }
    if (!strcmp(mode, "sleep")) { int32_t r = spear_sleep(3600LL * 1000000000LL); printf("%d\n", r); return 0; }
    if (!strcmp(mode, "wait")) { spear_pollfd_t fd = {spear_stream_caller(), SPEAR_POLLIN, 0}; return spear_poll(&fd, 1, -1) == -ECANCELED ? 0 : 9; }
    fprintf(stderr, "unknown mode %s\n", mode);
    return 2;
}
