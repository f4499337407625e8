// podnet-cni's compiled front: the fast path of podnet.cni.shim without a Python interpreter.
//
// A CNI plugin is a new process per call; starting Python costs ~8 ms of CPU before a line runs,
// paid by every pod and by each of N concurrent ADDs on the node's cores. This program does only
// the forwarding: it sends the raw invocation (CNI_* environment, stdin) to the node agent as one
// EXEC request, and prints the agent's answer (what podnet.cni.plugin.run would have printed):
//
//   {"verb":"EXEC","env":{...},"stdin":"...","netns":[dev,ino],"pid":N}  ->  {"exit":0,"stdout":"...","stderr":"..."}
//
// Everything else is the Python plugin's, exec'd in place of this process with stdin replayed
// (PODNET_PYTHON runs PODNET_LAUNCHER): VERSION or no CNI_COMMAND; input that is not UTF-8 or
// not a JSON object; an agent that cannot be reached (DEL is queued there) or does not know EXEC.
// After the request was sent, a failure is handed over with PODNET_CNI_SENT=<reason> (code 11)
// or PODNET_CNI_MALFORMED=<reason> (code 999), so the request is never sent twice; an agent
// without EXEC with PODNET_CNI_NO_EXEC=1 (the Python plugin does not ask it again).
//
// Built by podnet.lab.cni_runtime.install_podnet_plugin: cc -O2 -DPODNET_PYTHON=... -DPODNET_LAUNCHER=...
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#ifndef PODNET_PYTHON
#error "PODNET_PYTHON (the interpreter of the Python plugin) must be defined"
#endif
#ifndef PODNET_LAUNCHER
#error "PODNET_LAUNCHER (the Python plugin's launcher script) must be defined"
#endif

#define DEFAULT_SOCKET "/run/podnet/agent.sock"
#define DEFAULT_TIMEOUT 30.0
#define MAX_TIMEOUT 3600.0

extern char **environ;

struct buf {
    char *data;
    size_t len, cap;
};

static void put(struct buf *b, const char *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1) cap *= 2;
        char *grown = realloc(b->data, cap);
        if (!grown) {
            perror("podnet-cni: out of memory");
            exit(1);
        }
        b->data = grown;
        b->cap = cap;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = 0;
}

static void puts_(struct buf *b, const char *s) { put(b, s, strlen(s)); }

static struct buf in;  // stdin, kept to replay to the Python plugin

// Hand the invocation to the Python plugin: stdin replayed from a memfd, reason (if any) in env.
static void python(const char *var, const char *reason) {
    int fd = memfd_create("podnet-cni-stdin", 0);
    if (fd >= 0 && (size_t)write(fd, in.data ? in.data : "", in.len) == in.len && lseek(fd, 0, SEEK_SET) == 0) {
        dup2(fd, 0);
        close(fd);
    }
    if (var) setenv(var, reason, 1);
    char *argv[] = {PODNET_PYTHON, "-S", PODNET_LAUNCHER, NULL};
    execv(PODNET_PYTHON, argv);
    fprintf(stderr, "podnet-cni: cannot run %s: %s\n", PODNET_PYTHON, strerror(errno));
    printf("{\"code\": 999, \"msg\": \"podnet-cni: cannot run its Python plugin\", \"details\": \"%s\"}\n",
           strerror(errno));
    exit(1);
}

// Strict UTF-8 as Python decodes it (no overlongs, no encoded surrogates, <= U+10FFFF), no NUL.
static int valid_utf8(const unsigned char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        unsigned char c = s[i];
        size_t k;
        if (c == 0) return 0;
        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xC2 && c <= 0xDF) k = 1;
        else if (c >= 0xE0 && c <= 0xEF) k = 2;
        else if (c >= 0xF0 && c <= 0xF4) k = 3;
        else return 0;
        if (i + k >= n) return 0;
        unsigned char d = s[i + 1];
        if ((c == 0xE0 && d < 0xA0) || (c == 0xED && d > 0x9F) || (c == 0xF0 && d < 0x90) || (c == 0xF4 && d > 0x8F))
            return 0;
        for (size_t j = 1; j <= k; j++)
            if ((s[i + j] & 0xC0) != 0x80) return 0;
        i += k + 1;
    }
    return 1;
}

static void quote(struct buf *b, const char *s) {
    puts_(b, "\"");
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char esc[8];
        if (*p == '"' || *p == '\\') {
            esc[0] = '\\', esc[1] = *p, esc[2] = 0;
            puts_(b, esc);
        } else if (*p < 0x20) {
            snprintf(esc, sizeof esc, "\\u%04x", *p);
            puts_(b, esc);
        } else {
            put(b, (const char *)p, 1);
        }
    }
    puts_(b, "\"");
}

// --- a minimal JSON reader: the top-level keys of the config, and the agent's answer ---------

static const char *ws(const char *p) {
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
    return p;
}

static void utf8(struct buf *b, unsigned cp) {
    char o[4];
    if (cp < 0x80) o[0] = cp, put(b, o, 1);
    else if (cp < 0x800) o[0] = 0xC0 | cp >> 6, o[1] = 0x80 | (cp & 0x3F), put(b, o, 2);
    else if (cp < 0x10000) o[0] = 0xE0 | cp >> 12, o[1] = 0x80 | (cp >> 6 & 0x3F), o[2] = 0x80 | (cp & 0x3F), put(b, o, 3);
    else o[0] = 0xF0 | cp >> 18, o[1] = 0x80 | (cp >> 12 & 0x3F), o[2] = 0x80 | (cp >> 6 & 0x3F), o[3] = 0x80 | (cp & 0x3F), put(b, o, 4);
}

static int hex4(const char *p, unsigned *out) {
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= c - '0';
        else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
        else return 0;
    }
    *out = v;
    return 1;
}

// A JSON string at p (after ws); decoded into out if given. Returns the end, or NULL.
// Lone surrogates \udc80-\udcff (Python's surrogateescape of undecodable bytes) become the byte.
static const char *string(const char *p, struct buf *out) {
    if (*p != '"') return NULL;
    for (p++; *p && *p != '"'; p++) {
        if ((unsigned char)*p < 0x20) return NULL;
        if (*p != '\\') {
            if (out) put(out, p, 1);
            continue;
        }
        p++;
        char c = *p, simple = c == 'n' ? '\n' : c == 't' ? '\t' : c == 'r' ? '\r' : c == 'b' ? '\b' : c == 'f' ? '\f' : c;
        if (c == 'u') {
            unsigned cp, lo;
            if (!hex4(p + 1, &cp)) return NULL;
            p += 4;
            if (cp >= 0xD800 && cp < 0xDC00 && p[1] == '\\' && p[2] == 'u' && hex4(p + 3, &lo) && lo >= 0xDC00 && lo < 0xE000) {
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                p += 6;
            } else if (cp >= 0xDC80 && cp <= 0xDCFF) {
                if (out) { char byte = (char)(cp - 0xDC00); put(out, &byte, 1); }
                continue;
            } else if (cp >= 0xD800 && cp < 0xE000) {
                return NULL;
            }
            if (out) utf8(out, cp);
        } else if (strchr("\"\\/bfnrt", c) && c) {
            if (out) put(out, &simple, 1);
        } else {
            return NULL;
        }
    }
    return *p == '"' ? p + 1 : NULL;
}

// Skip any JSON value; returns its end, or NULL (also past 64 levels: the Python plugin reports).
static const char *value_at(const char *p, int depth) {
    if (depth > 64) return NULL;
    p = ws(p);
    if (*p == '"') return string(p, NULL);
    if (*p == '{' || *p == '[') {
        char close = *p == '{' ? '}' : ']';
        p = ws(p + 1);
        if (*p == close) return p + 1;
        for (;;) {
            if (close == '}') {
                p = string(ws(p), NULL);
                if (!p) return NULL;
                p = ws(p);
                if (*p++ != ':') return NULL;
            }
            p = value_at(p, depth + 1);
            if (!p) return NULL;
            p = ws(p);
            if (*p == ',') { p++; continue; }
            return *p == close ? p + 1 : NULL;
        }
    }
    const char *start = p;
    while (*p && strchr("+-.0123456789eEtrufalsn", *p)) p++;
    return p > start ? p : NULL;
}

static const char *value(const char *p) { return value_at(p, 0); }

// Walk a top-level object; call found(key, value_start) for each key. Returns 0 if not an object.
typedef void (*visit)(const char *key, const char *v, void *ctx);

static int object(const char *text, visit found, void *ctx) {
    const char *p = ws(text);
    if (*p != '{') return 0;
    p = ws(p + 1);
    if (*p == '}') return *ws(p + 1) == 0;
    for (;;) {
        struct buf key = {0};
        p = string(ws(p), &key);
        if (!p) return 0;
        p = ws(p);
        if (*p++ != ':') return 0;
        const char *v = ws(p);
        p = value(v);
        if (!p) return 0;
        found(key.data ? key.data : "", v, ctx);
        free(key.data);
        p = ws(p);
        if (*p == ',') { p++; continue; }
        return *p == '}' && *ws(p + 1) == 0;
    }
}

struct config {
    struct buf socket;
    double timeout;
};

static void config_key(const char *key, const char *v, void *ctx) {
    struct config *c = ctx;
    if (!strcmp(key, "agent_socket") && *v == '"') {
        c->socket.len = 0;
        if (!string(v, &c->socket)) c->socket.len = 0;
    } else if (!strcmp(key, "timeout_seconds") && strchr("0123456789.", *v)) {
        double t = strtod(v, NULL);
        if (t > 0 && t <= MAX_TIMEOUT) c->timeout = t;
    }
}

struct answer {
    int has_exit, exit;
    struct buf out, err;
};

static void answer_key(const char *key, const char *v, void *ctx) {
    struct answer *a = ctx;
    if (!strcmp(key, "exit") && (*v == '-' || (*v >= '0' && *v <= '9'))) {
        a->has_exit = 1;
        a->exit = atoi(v);
    } else if (!strcmp(key, "stdout") && *v == '"') {
        string(v, &a->out);
    } else if (!strcmp(key, "stderr") && *v == '"') {
        string(v, &a->err);
    }
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(void) {
    const char *command = getenv("CNI_COMMAND");
    if (!command || !*command || !strcmp(command, "VERSION")) python(NULL, NULL);

    char chunk[65536];
    ssize_t n;
    while ((n = read(0, chunk, sizeof chunk)) > 0) put(&in, chunk, n);
    if (n < 0 || !valid_utf8((unsigned char *)(in.data ? in.data : ""), in.len)) python(NULL, NULL);

    struct config conf = {.timeout = DEFAULT_TIMEOUT};
    if (!object(in.data ? in.data : "", config_key, &conf)) python(NULL, NULL);  // its error to report
    const char *path = conf.socket.len && conf.socket.data[0] == '/' ? conf.socket.data : getenv("PODNET_AGENT_SOCKET");
    if (!path || !*path) path = DEFAULT_SOCKET;

    struct buf req = {0};
    puts_(&req, "{\"verb\":\"EXEC\",\"env\":{");
    int first = 1;
    for (char **e = environ; *e; e++) {
        if (strncmp(*e, "CNI_", 4) && strncmp(*e, "PODNET_AGENT_SOCKET=", 20)) continue;
        if (!valid_utf8((unsigned char *)*e, strlen(*e))) python(NULL, NULL);
        char *eq = strchr(*e, '=');
        if (!eq) continue;
        *eq = 0;
        if (!first) puts_(&req, ",");
        first = 0;
        quote(&req, *e);
        puts_(&req, ":");
        quote(&req, eq + 1);
        *eq = '=';
    }
    puts_(&req, "},\"stdin\":");
    quote(&req, in.data ? in.data : "");
    struct stat st;
    char tail[128];
    if (stat("/proc/self/ns/net", &st) != 0) python(NULL, NULL);
    snprintf(tail, sizeof tail, ",\"netns\":[%llu,%llu],\"pid\":%d}\n", (unsigned long long)st.st_dev,
             (unsigned long long)st.st_ino, (int)getpid());
    puts_(&req, tail);

    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof addr.sun_path) python(NULL, NULL);
    strcpy(addr.sun_path, path);
    int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (sock < 0 || connect(sock, (struct sockaddr *)&addr, sizeof addr) != 0) python(NULL, NULL);

    for (size_t sent = 0; sent < req.len;) {
        ssize_t w = send(sock, req.data + sent, req.len - sent, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR) continue;
            python("PODNET_CNI_SENT", strerror(errno));
        }
        sent += w;
    }
    struct buf resp = {0};
    double deadline = now() + conf.timeout;
    for (;;) {
        int left = (int)((deadline - now()) * 1000);
        struct pollfd pfd = {.fd = sock, .events = POLLIN};
        int ready = left > 0 ? poll(&pfd, 1, left) : 0;
        if (ready < 0 && errno == EINTR) continue;
        if (ready <= 0) {
            char why[64];
            snprintf(why, sizeof why, "did not answer within %gs", conf.timeout);
            python("PODNET_CNI_SENT", why);
        }
        n = recv(sock, chunk, sizeof chunk, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) python("PODNET_CNI_SENT", strerror(errno));
        if (n == 0) break;
        put(&resp, chunk, n);
        if (resp.data[resp.len - 1] == '\n') break;
    }
    close(sock);
    if (!resp.len) python("PODNET_CNI_SENT", "closed the connection without answering");
    struct answer a = {0};
    if (!object(resp.data, answer_key, &a)) python("PODNET_CNI_MALFORMED", "the answer to EXEC is not a JSON object");
    if (!a.has_exit) python("PODNET_CNI_NO_EXEC", "1");  // an agent without EXEC: nothing done, the plugin runs
    if (a.err.len) fwrite(a.err.data, 1, a.err.len, stderr);
    if (a.out.len) fwrite(a.out.data, 1, a.out.len, stdout);
    return a.exit;
}
