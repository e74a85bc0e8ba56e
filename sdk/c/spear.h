/* spear.h: the host functions a WebAssembly agent imports from spear (module "spear").
 *
 * The contract is docs/hostcalls.md. Build an agent with Debian's toolchain:
 *     clang --target=wasm32-wasi -O2 -I sdk/c -o agent.wasm agent.c
 *
 * Conventions:
 *   - a result >= 0 is success; a negative errno (wasi-libc's <errno.h> numbers:
 *     -EAGAIN, -EINVAL, -ENOSPC, -EPIPE, ...) is an expected failure, never a trap;
 *   - a call that fills a buffer takes (out, out_len): *out_len is the capacity going in
 *     and the length coming out; when the buffer is too small the call returns -ENOSPC
 *     with the length needed in *out_len (and consumes nothing);
 *   - streams are integer handles in the task's handle table; spear_poll waits for
 *     readiness over many of them (level-triggered, like poll(2));
 *   - a bad pointer or length is -EFAULT (or -EINVAL), never a crash of the host.
 */
#ifndef SPEAR_H
#define SPEAR_H

#include <errno.h>
#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The ABI this header describes; spear_abi_version() is the host's. */
#define SPEAR_ABI_VERSION 1

#define SPEAR_IMPORT(name) __attribute__((import_module("spear"), import_name(name)))

/* -- basics --------------------------------------------------------------------- */

enum { SPEAR_LOG_TRACE = 0, SPEAR_LOG_DEBUG, SPEAR_LOG_INFO, SPEAR_LOG_WARNING, SPEAR_LOG_ERROR };

SPEAR_IMPORT("abi_version") int32_t spear_abi_version(void);
/* Append one message to the task's agent log (`spear logs ID --stream agent`). */
SPEAR_IMPORT("log") int32_t spear_log(int32_t level, const char *msg, uint32_t len);

/* -- objects --------------------------------------------------------------------- */

/* expected_version for puts and deletes */
#define SPEAR_ANY_VERSION ((int64_t)-1) /* unconditional */
#define SPEAR_ABSENT ((int64_t)0)       /* only if the object does not exist */

typedef struct spear_obj_info {
    uint64_t size;
    uint64_t version;
    uint32_t refcount;
    uint32_t pinned;
} spear_obj_info_t;

/* Write an object. Returns 0 and the new version in *version_out (if not NULL);
 * -ESTALE when the object is not at expected_version (nothing changed), -EFBIG over the
 * maximum object size, -EDQUOT when the store is full, -EINVAL for a bad key. */
SPEAR_IMPORT("obj_put")
int32_t spear_obj_put(const char *key, uint32_t key_len, const void *value, uint32_t len,
                      int64_t expected_version, uint64_t *version_out);
/* Read an object into (out, *out_len): its length; -ENOENT; -ENOSPC (needed in *out_len). */
SPEAR_IMPORT("obj_get")
int32_t spear_obj_get(const char *key, uint32_t key_len, void *out, uint32_t *out_len,
                      uint64_t *version_out);
SPEAR_IMPORT("obj_info")
int32_t spear_obj_info(const char *key, uint32_t key_len, spear_obj_info_t *out);
/* Keys under a prefix, each followed by a NUL: returns their number. */
SPEAR_IMPORT("obj_list")
int32_t spear_obj_list(const char *prefix, uint32_t prefix_len, char *out, uint32_t *out_len);
/* -EBUSY while pinned or referenced; -ESTALE when not at expected_version. */
SPEAR_IMPORT("obj_delete")
int32_t spear_obj_delete(const char *key, uint32_t key_len, int64_t expected_version);
/* References held by this task are released when it ends. Return the new count. */
SPEAR_IMPORT("obj_add_ref") int32_t spear_obj_add_ref(const char *key, uint32_t key_len);
SPEAR_IMPORT("obj_remove_ref") int32_t spear_obj_remove_ref(const char *key, uint32_t key_len);
SPEAR_IMPORT("obj_pin") int32_t spear_obj_pin(const char *key, uint32_t key_len);
SPEAR_IMPORT("obj_unpin") int32_t spear_obj_unpin(const char *key, uint32_t key_len);
/* The task's result object (results/<task id>) instead of its stdout. */
SPEAR_IMPORT("result_set") int32_t spear_result_set(const void *value, uint32_t len);

/* -- streams and readiness -------------------------------------------------------- */

#define SPEAR_POLLIN 0x1
#define SPEAR_POLLOUT 0x4
#define SPEAR_POLLERR 0x8
#define SPEAR_POLLHUP 0x10
#define SPEAR_POLLNVAL 0x20

typedef struct spear_pollfd {
    int32_t handle;
    int16_t events;  /* SPEAR_POLLIN | SPEAR_POLLOUT */
    int16_t revents; /* filled by spear_poll */
} spear_pollfd_t;

/* The handle of this task's caller stream (messages in from, and out to, its caller). */
SPEAR_IMPORT("stream_caller") int32_t spear_stream_caller(void);
/* The next message: its length; -EAGAIN none yet; -EPIPE the input ended; -ENOSPC. */
SPEAR_IMPORT("stream_read")
int32_t spear_stream_read(int32_t handle, void *out, uint32_t *out_len);
/* Send one message: its length; -EAGAIN queue full (wait for POLLOUT); -EPIPE no reader;
 * -EMSGSIZE over the maximum message size. */
SPEAR_IMPORT("stream_write")
int32_t spear_stream_write(int32_t handle, const void *msg, uint32_t len);
/* Close a handle; closing the caller stream ends the task's output. */
SPEAR_IMPORT("close") int32_t spear_close(int32_t handle);
/* Wait until one entry is ready (timeout_ms < 0: forever; 0: just look). Returns how
 * many are ready, 0 on timeout, -ECANCELED if the task is being stopped. */
SPEAR_IMPORT("poll") int32_t spear_poll(spear_pollfd_t *fds, uint32_t n, int32_t timeout_ms);

/* -- time -------------------------------------------------------------------------- */

#define SPEAR_CLOCK_REALTIME 0
#define SPEAR_CLOCK_MONOTONIC 1
SPEAR_IMPORT("time_now") int32_t spear_time_now(int32_t clock, uint64_t *nanos_out);
/* Sleep without holding up the node; -ECANCELED if the task is being stopped. */
SPEAR_IMPORT("sleep") int32_t spear_sleep(int64_t nanos);

/* -- AI models (docs/hostcalls.md "Models", docs/models.md) ------------------------- */

#define SPEAR_CHAT_STREAM 0x1 /* model_chat_start flag: deliver the text as it is generated */

/* Start a chat completion. `req` is JSON with OpenAI's chat fields ({"messages": [...],
 * "model"?, "tools"?, "tool_choice"?, "max_tokens"?, "temperature"?, ...}). Returns the
 * call's handle at once; poll it (SPEAR_POLLIN) and read the text / result. -EINVAL bad
 * request, -ENOENT unknown model, -EACCES model not allowed to this task, -ENOSYS no models. */
SPEAR_IMPORT("model_chat_start")
int32_t spear_model_chat_start(const char *req, uint32_t req_len, int32_t flags);
/* The next piece of a streaming call's text (UTF-8): its length; -EAGAIN none yet;
 * -EPIPE the text is complete; the call's error (-ECONNREFUSED backend down, -ETIMEDOUT,
 * -EINVAL refused by the backend, -ECANCELED); -ENOSPC (needed in *out_len, piece kept). */
SPEAR_IMPORT("model_chat_read")
int32_t spear_model_chat_read(int32_t handle, char *out, uint32_t *out_len);
/* The call's response, an OpenAI chat.completion JSON object (tool calls included): its
 * length; -EAGAIN not finished; the call's error; -ENOSPC (needed in *out_len, kept). */
SPEAR_IMPORT("model_chat_result")
int32_t spear_model_chat_result(int32_t handle, char *out, uint32_t *out_len);
/* Why the call failed, as text (cut to the buffer; length 0 if it has not failed). */
SPEAR_IMPORT("model_chat_error")
int32_t spear_model_chat_error(int32_t handle, char *out, uint32_t *out_len);
/* Embeddings of {"model"?, "input": "text" | ["text", ...]} into (out, *out_len): the
 * length of an OpenAI embeddings JSON list. Blocks this task until done. */
SPEAR_IMPORT("model_embed")
int32_t spear_model_embed(const char *req, uint32_t req_len, char *out, uint32_t *out_len);

/* -- MCP tools (docs/hostcalls.md "Tools", docs/toolkit.md) ------------------------- */

/* The tools this task may call, as JSON {"tools": [{"name": "server/tool", "description",
 * "input_schema"}], "unavailable": {"server": "why"}}: its length; -ENOSPC (needed in
 * *out_len); -ENOSYS the node has no MCP servers. */
SPEAR_IMPORT("tool_list") int32_t spear_tool_list(char *out, uint32_t *out_len);
/* Start a tool call of {"name": "server/tool", "arguments": {...}, "timeout_s"?}: its
 * handle (poll it for SPEAR_POLLIN). -ENOENT unknown server or tool, -EACCES not allowed
 * to this task, -EINVAL malformed. */
SPEAR_IMPORT("tool_call_start")
int32_t spear_tool_call_start(const char *req, uint32_t req_len);
/* The call's result {"content": [...], "text", "structured", "is_error"}: its length;
 * -EAGAIN not finished; the call's error (-ETIMEDOUT, -ECONNREFUSED server down, -EINVAL
 * arguments refused); -ENOSPC (needed in *out_len, kept). */
SPEAR_IMPORT("tool_call_result")
int32_t spear_tool_call_result(int32_t handle, char *out, uint32_t *out_len);

/* A host-run tool loop: a chat request with a "loop" object ({"mcp": true | [globs],
 * "functions": [tools the agent answers], "max_steps", "then"}); the host runs MCP tools,
 * feeds results back, until a text answer or the step limit. Read the handle with
 * spear_model_chat_read (one JSON event a read: text, call, result) and
 * spear_model_chat_result (the last chat.completion, with "steps"). */
SPEAR_IMPORT("tool_loop_start")
int32_t spear_tool_loop_start(const char *req, uint32_t req_len);
/* Answer a call the loop asked of the agent ("by": "agent"): {"id", "content"}. */
SPEAR_IMPORT("tool_loop_answer")
int32_t spear_tool_loop_answer(int32_t handle, const char *answer, uint32_t answer_len);

/* -- subtasks (docs/hostcalls.md "Subtasks", docs/toolkit.md) ----------------------- */

/* Start a child task of a JSON spec {"artifact", "runtime"?, "args"?: [...], "env"?: {},
 * "inputs"?: [object keys], "stdin"?, "timeout_s"?, "resources"?, ...}; a relative WASM
 * artifact is beside the parent's module. Returns the child's handle: poll it
 * (SPEAR_POLLIN) to wait for any or all children. -EINVAL malformed, -EACCES a child this
 * task may not start, -EMFILE too many children, -ENOENT no such artifact. */
SPEAR_IMPORT("task_spawn") int32_t spear_task_spawn(const char *spec, uint32_t spec_len);
/* The child's end {"id", "state", "exit_code", "reason", "output"}: its length; -EAGAIN
 * still running; -ENOSPC (needed in *out_len, kept). A failed child is a result. */
SPEAR_IMPORT("task_result")
int32_t spear_task_result(int32_t handle, char *out, uint32_t *out_len);
/* Cancel the child (its result then says "cancelled"). */
SPEAR_IMPORT("task_cancel") int32_t spear_task_cancel(int32_t handle);

/* -- vector store (docs/hostcalls.md "Vectors", docs/toolkit.md) -------------------- */

/* One JSON request {"op": "create"|"drop"|"list"|"upsert"|"query"|"delete"|"count",
 * "collection", ...} into (out, *out_len): the JSON answer's length. Every op may be
 * repeated: on -ENOSPC (needed in *out_len) ask again. -ENOENT no such collection,
 * -EINVAL malformed or a dimension mismatch, -ESTALE create with another dim. */
SPEAR_IMPORT("vec_request")
int32_t spear_vec_request(const char *req, uint32_t req_len, char *out, uint32_t *out_len);

/* -- helpers (header only) ---------------------------------------------------------- */

/* 0 if the host speaks this header's ABI, else -ENOTSUP (after logging why). */
static inline int spear_check_abi(void) {
    if (spear_abi_version() != SPEAR_ABI_VERSION) {
        static const char msg[] = "spear.h ABI version does not match the host's";
        spear_log(SPEAR_LOG_ERROR, msg, sizeof msg - 1);
        return -ENOTSUP;
    }
    return 0;
}

/* Wait until `handle` has `events` ready (or an error / hang-up). */
static inline int32_t spear_wait(int32_t handle, int16_t events, int32_t timeout_ms) {
    spear_pollfd_t fd = {handle, events, 0};
    int32_t r = spear_poll(&fd, 1, timeout_ms);
    return r < 0 ? r : fd.revents;
}

/* Blocking read of the next message: its length, -EPIPE at the end, -ENOSPC if too long. */
static inline int32_t spear_stream_recv(int32_t handle, void *out, uint32_t *out_len) {
    uint32_t cap = *out_len;
    for (;;) {
        *out_len = cap;
        int32_t r = spear_stream_read(handle, out, out_len);
        if (r != -EAGAIN) return r;
        r = spear_wait(handle, SPEAR_POLLIN, -1);
        if (r < 0) return r;
    }
}

/* Blocking write of one message (waits while the caller's queue is full). */
static inline int32_t spear_stream_send(int32_t handle, const void *msg, uint32_t len) {
    for (;;) {
        int32_t r = spear_stream_write(handle, msg, len);
        if (r != -EAGAIN) return r;
        r = spear_wait(handle, SPEAR_POLLOUT, -1);
        if (r < 0) return r;
    }
}

static inline int32_t spear_put_str(const char *key, const void *value, uint32_t len,
                                    int64_t expected_version, uint64_t *version_out) {
    return spear_obj_put(key, (uint32_t)strlen(key), value, len, expected_version, version_out);
}

static inline int32_t spear_get_str(const char *key, void *out, uint32_t *out_len,
                                    uint64_t *version_out) {
    return spear_obj_get(key, (uint32_t)strlen(key), out, out_len, version_out);
}

/* Blocking read of a streaming call's next text piece: its length, -EPIPE at the end. */
static inline int32_t spear_model_chat_recv(int32_t handle, char *out, uint32_t *out_len) {
    uint32_t cap = *out_len;
    for (;;) {
        *out_len = cap;
        int32_t r = spear_model_chat_read(handle, out, out_len);
        if (r != -EAGAIN) return r;
        r = spear_wait(handle, SPEAR_POLLIN, -1);
        if (r < 0) return r;
    }
}

/* Blocking chat completion: the chat.completion JSON into (out, *out_len), its length.
 * The call is closed afterwards: on -ENOSPC (needed length in *out_len) ask again. */
static inline int32_t spear_model_chat(const char *req, uint32_t req_len, char *out,
                                       uint32_t *out_len) {
    int32_t handle = spear_model_chat_start(req, req_len, 0);
    if (handle < 0) return handle;
    uint32_t cap = *out_len;
    int32_t r;
    for (;;) {
        *out_len = cap;
        r = spear_model_chat_result(handle, out, out_len);
        if (r != -EAGAIN) break;
        r = spear_wait(handle, SPEAR_POLLIN, -1);
        if (r < 0) break;
    }
    spear_close(handle);
    return r;
}

/* Blocking tool call: the result JSON into (out, *out_len), its length. The call is
 * closed afterwards: on -ENOSPC (needed length in *out_len) the result is lost. */
static inline int32_t spear_tool_call(const char *req, uint32_t req_len, char *out,
                                      uint32_t *out_len) {
    int32_t handle = spear_tool_call_start(req, req_len);
    if (handle < 0) return handle;
    uint32_t cap = *out_len;
    int32_t r;
    for (;;) {
        *out_len = cap;
        r = spear_tool_call_result(handle, out, out_len);
        if (r != -EAGAIN) break;
        r = spear_wait(handle, SPEAR_POLLIN, -1);
        if (r < 0) break;
    }
    spear_close(handle);
    return r;
}

#ifdef __cplusplus
}
#endif
#endif /* SPEAR_H */
