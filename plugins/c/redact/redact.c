// `redact` in C: an Outrigger handler that hides secrets in event payloads.
//
// In: batches of events and, at `init`, a config `{"fields": ["password", "token"]}`. Out: one
// verdict per event: `replace` with every top-level payload field named in `fields` set to
// `"***"`, or `keep` when the event has none of them (or its payload is not a JSON object).
// Counts redacted fields as `outrigger_plugin_counter_total{plugin="redact", name="redacted"}`.
//
// The output is byte for byte the one of the Rust reference (plugins/redact, its src/json.rs;
// docs/plugins.md, "The redact contract"). A replaced payload is re-serialised with no
// whitespace, object keys sorted by UTF-8 bytes at every level (duplicate keys: the last wins),
// strings escaped as serde_json does, and numbers copied verbatim except their exponent, which
// becomes `e` plus an explicit sign. Anything the reference refuses (lone surrogate escapes,
// nesting deeper than 127 containers, ...) is kept untouched.
//
// Bindings come from `wit-bindgen c --world handler wit/` (see build.sh). The core module uses
// only malloc/realloc/free, qsort and the mem* functions of wasi-libc, so it imports nothing
// from WASI. Memory: each payload's tree lives in an arena emptied after the event; the event
// list is freed (or moved into `replace` verdicts) before `on-batch` returns.

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "handler.h"

// ---------------------------------------------------------------------------------------------
// Memory

// Out of memory: trap, as the generated cabi_realloc does.
static void *xrealloc(void *ptr, size_t size) {
  void *p = realloc(ptr, size ? size : 1);
  if (!p) __builtin_trap();
  return p;
}

static void *xmalloc(size_t size) { return xrealloc(NULL, size); }

// A bump allocator for the tree of one payload: freed as a whole once the event is done.
#define ARENA_BLOCK_SIZE 16384

typedef struct arena_block {
  struct arena_block *next;
  size_t cap, used;
  _Alignas(8) unsigned char data[];
} arena_block;

typedef struct {
  arena_block *head;
} arena;

static void *arena_alloc(arena *a, size_t size) {
  size = (size + 7) & ~(size_t)7;
  arena_block *b = a->head;
  if (!b || b->cap - b->used < size) {
    size_t cap = size > ARENA_BLOCK_SIZE ? size : ARENA_BLOCK_SIZE;
    b = xmalloc(sizeof *b + cap);
    b->cap = cap;
    b->used = 0;
    b->next = a->head;
    a->head = b;
  }
  void *p = b->data + b->used;
  b->used += size;
  return p;
}

// Empties the arena, keeping one standard block for the next payload.
static void arena_reset(arena *a) {
  arena_block *keep = NULL, *b = a->head;
  while (b) {
    arena_block *next = b->next;
    if (!keep && b->cap == ARENA_BLOCK_SIZE) {
      keep = b;
      keep->used = 0;
      keep->next = NULL;
    } else {
      free(b);
    }
    b = next;
  }
  a->head = keep;
}

// Gives every block back to malloc.
static void arena_free(arena *a) {
  arena_block *b = a->head;
  while (b) {
    arena_block *next = b->next;
    free(b);
    b = next;
  }
  a->head = NULL;
}

// A growable byte buffer.
typedef struct {
  char *ptr;
  size_t len, cap;
} buffer;

static void buf_reserve(buffer *b, size_t extra) {
  if (b->cap - b->len >= extra) return;
  size_t cap = b->cap ? b->cap * 2 : 64;
  while (cap - b->len < extra) cap *= 2;
  b->ptr = xrealloc(b->ptr, cap);
  b->cap = cap;
}

static void buf_put(buffer *b, const char *s, size_t n) {
  buf_reserve(b, n);
  memcpy(b->ptr + b->len, s, n);
  b->len += n;
}

static void buf_byte(buffer *b, char c) {
  buf_reserve(b, 1);
  b->ptr[b->len++] = c;
}

static void buf_str(buffer *b, const char *s) { buf_put(b, s, strlen(s)); }

static void buf_uint(buffer *b, size_t n) {
  char digits[24];
  size_t i = sizeof digits;
  do {
    digits[--i] = (char)('0' + n % 10);
    n /= 10;
  } while (n);
  buf_put(b, digits + i, sizeof digits - i);
}

// ---------------------------------------------------------------------------------------------
// The JSON tree

typedef struct {
  const char *ptr;
  size_t len;
} slice;

typedef enum { J_NULL, J_FALSE, J_TRUE, J_NUMBER, J_STRING, J_ARRAY, J_OBJECT } jkind;

typedef struct jvalue jvalue;

typedef struct {
  slice key;     // decoded UTF-8
  jvalue *value;
  size_t order;  // position in the input, so that the last of duplicate keys wins
} jmember;

struct jvalue {
  jkind kind;
  union {
    slice text;  // J_NUMBER: the number token as in the input; J_STRING: decoded UTF-8
    struct {
      jvalue **items;
      size_t len;
    } array;
    struct {
      jmember *items;  // sorted by key, no duplicates
      size_t len;
    } object;
  } u;
};

static jvalue NULL_VALUE = {.kind = J_NULL};
static jvalue FALSE_VALUE = {.kind = J_FALSE};
static jvalue TRUE_VALUE = {.kind = J_TRUE};
static jvalue REDACTED_VALUE = {.kind = J_STRING, .u.text = {"***", 3}};

// Key order: bytes (= Unicode code points for UTF-8), then length.
static int slice_cmp(slice a, slice b) {
  int c = memcmp(a.ptr, b.ptr, a.len < b.len ? a.len : b.len);
  if (c) return c;
  return a.len < b.len ? -1 : a.len > b.len;
}

static bool slice_eq(slice a, const char *s, size_t n) {
  return a.len == n && memcmp(a.ptr, s, n) == 0;
}

// ---------------------------------------------------------------------------------------------
// The parser: RFC 8259 exactly as serde_json reads it into a `serde_json::Value`.

// serde_json's recursion limit: the 128th nested container is refused.
#define MAX_DEPTH 128

typedef struct {
  const char *start, *p, *end;
  int depth_left;
  bool payload;  // a payload: keep only the last of duplicate keys; else (the config) keep
                 // them all
  arena *arena;
  // Children of the containers being parsed, innermost last; copied into the arena when a
  // container ends.
  jvalue **values;
  size_t values_len, values_cap;
  jmember *members;
  size_t members_len, members_cap;
  // The first error, for config messages.
  const char *error;
  const char *error_at;
} parser;

static void parser_init(parser *ps, arena *a, const char *text, size_t len, bool payload) {
  memset(ps, 0, sizeof *ps);
  ps->start = ps->p = text;
  ps->end = text + len;
  ps->depth_left = MAX_DEPTH;
  ps->payload = payload;
  ps->arena = a;
}

static void parser_free(parser *ps) {
  free(ps->values);
  free(ps->members);
  ps->values = NULL;
  ps->members = NULL;
}

static void *fail(parser *ps, const char *what) {
  if (!ps->error) {
    ps->error = what;
    ps->error_at = ps->p;
  }
  return NULL;
}

static void skip_ws(parser *ps) {
  while (ps->p < ps->end &&
         (*ps->p == ' ' || *ps->p == '\n' || *ps->p == '\t' || *ps->p == '\r'))
    ps->p++;
}

static bool is_digit(char c) { return c >= '0' && c <= '9'; }

static int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Reads the 4 hex digits of a `\u` escape at `p` (bounded by `end`); -1 if they are not.
static long read_hex4(const char *p, const char *end) {
  if (end - p < 4) return -1;
  long n = 0;
  for (int i = 0; i < 4; i++) {
    int d = hex_value(p[i]);
    if (d < 0) return -1;
    n = n * 16 + d;
  }
  return n;
}

static char *put_utf8(char *dst, uint32_t cp) {
  if (cp < 0x80) {
    *dst++ = (char)cp;
  } else if (cp < 0x800) {
    *dst++ = (char)(0xC0 | cp >> 6);
    *dst++ = (char)(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    *dst++ = (char)(0xE0 | cp >> 12);
    *dst++ = (char)(0x80 | (cp >> 6 & 0x3F));
    *dst++ = (char)(0x80 | (cp & 0x3F));
  } else {
    *dst++ = (char)(0xF0 | cp >> 18);
    *dst++ = (char)(0x80 | (cp >> 12 & 0x3F));
    *dst++ = (char)(0x80 | (cp >> 6 & 0x3F));
    *dst++ = (char)(0x80 | (cp & 0x3F));
  }
  return dst;
}

// Decodes the escaped string body [p, end) into dst (never longer than the input). Returns the
// end of the output, or NULL (with ps->p at the fault) if an escape or a byte is invalid.
static char *decode_escapes(parser *ps, const char *p, const char *end, char *dst) {
  while (p < end) {
    unsigned char c = (unsigned char)*p;
    if (c < 0x20) {
      ps->p = p;
      return fail(ps, "control character (\\u0000-\\u001F) found while parsing a string");
    }
    if (c != '\\') {
      *dst++ = (char)c;
      p++;
      continue;
    }
    ps->p = p;
    if (end - p < 2) return fail(ps, "invalid escape");
    char e = p[1];
    p += 2;
    switch (e) {
      case '"': *dst++ = '"'; continue;
      case '\\': *dst++ = '\\'; continue;
      case '/': *dst++ = '/'; continue;
      case 'b': *dst++ = '\b'; continue;
      case 'f': *dst++ = '\f'; continue;
      case 'n': *dst++ = '\n'; continue;
      case 'r': *dst++ = '\r'; continue;
      case 't': *dst++ = '\t'; continue;
      case 'u': break;
      default: return fail(ps, "invalid escape");
    }
    long n = read_hex4(p, end);
    if (n < 0) return fail(ps, "invalid escape");
    p += 4;
    if (n >= 0xDC00 && n <= 0xDFFF) return fail(ps, "lone leading surrogate in hex escape");
    if (n >= 0xD800 && n <= 0xDBFF) {
      // A high surrogate must be followed by a `\u` low surrogate.
      if (end - p < 2 || p[0] != '\\' || p[1] != 'u')
        return fail(ps, "unexpected end of hex escape");
      long n2 = read_hex4(p + 2, end);
      if (n2 < 0) return fail(ps, "invalid escape");
      if (n2 < 0xDC00 || n2 > 0xDFFF) return fail(ps, "lone leading surrogate in hex escape");
      p += 6;
      n = (((n - 0xD800) << 10) | (n2 - 0xDC00)) + 0x10000;
    }
    dst = put_utf8(dst, (uint32_t)n);
  }
  return dst;
}

// Parses the string at ps->p (on its opening quote) into *out.
static bool parse_string(parser *ps, slice *out) {
  const char *start = ++ps->p, *end = ps->end;
  const char *q = start;
  while (q < end && *q != '"' && *q != '\\' && (unsigned char)*q >= 0x20) q++;
  if (q < end && *q == '"') {  // the common case: nothing to decode, point into the input
    out->ptr = start;
    out->len = (size_t)(q - start);
    ps->p = q + 1;
    return true;
  }
  // Find the closing quote (an escape's second byte never closes the string), then decode.
  while (q < end && *q != '"') q += *q == '\\' ? 2 : 1;
  if (q >= end) {
    ps->p = end;
    return fail(ps, "EOF while parsing a string");
  }
  char *dst = arena_alloc(ps->arena, (size_t)(q - start));
  char *dst_end = decode_escapes(ps, start, q, dst);
  if (!dst_end) return false;
  out->ptr = dst;
  out->len = (size_t)(dst_end - dst);
  ps->p = q + 1;
  return true;
}

// Scans a JSON number at p; returns its end, or NULL if it is not one.
// -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
static const char *scan_number(const char *p, const char *end) {
  if (p < end && *p == '-') p++;
  if (p == end) return NULL;
  if (*p == '0') {
    p++;
    if (p < end && is_digit(*p)) return NULL;  // one leading zero only
  } else if (is_digit(*p)) {
    while (p < end && is_digit(*p)) p++;
  } else {
    return NULL;
  }
  if (p < end && *p == '.') {
    p++;
    if (p == end || !is_digit(*p)) return NULL;
    while (p < end && is_digit(*p)) p++;
  }
  if (p < end && (*p == 'e' || *p == 'E')) {
    p++;
    if (p < end && (*p == '+' || *p == '-')) p++;
    if (p == end || !is_digit(*p)) return NULL;
    while (p < end && is_digit(*p)) p++;
  }
  return p;
}

static jvalue *new_text(parser *ps, jkind kind, slice text) {
  jvalue *v = arena_alloc(ps->arena, sizeof *v);
  v->kind = kind;
  v->u.text = text;
  return v;
}

static jvalue *parse_value(parser *ps);

static jvalue *parse_literal(parser *ps, const char *word, jvalue *value) {
  size_t n = strlen(word);
  if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, word, n) != 0)
    return fail(ps, "expected ident");
  ps->p += n;
  return value;
}

static jvalue *parse_number(parser *ps) {
  const char *end = scan_number(ps->p, ps->end);
  if (!end) return fail(ps, "invalid number");
  slice text = {ps->p, (size_t)(end - ps->p)};
  ps->p = end;
  return new_text(ps, J_NUMBER, text);
}

static jvalue *parse_array(parser *ps) {
  if (--ps->depth_left == 0) return fail(ps, "recursion limit exceeded");
  ps->p++;  // '['
  size_t base = ps->values_len;
  skip_ws(ps);
  if (ps->p < ps->end && *ps->p == ']') {
    ps->p++;
  } else {
    for (;;) {
      jvalue *item = parse_value(ps);
      if (!item) return NULL;
      if (ps->values_len == ps->values_cap) {
        ps->values_cap = ps->values_cap ? ps->values_cap * 2 : 64;
        ps->values = xrealloc(ps->values, ps->values_cap * sizeof *ps->values);
      }
      ps->values[ps->values_len++] = item;
      skip_ws(ps);
      if (ps->p == ps->end) return fail(ps, "EOF while parsing a list");
      char c = *ps->p++;
      if (c == ']') break;
      if (c != ',') return ps->p--, fail(ps, "expected `,` or `]`");
    }
  }
  ps->depth_left++;
  size_t n = ps->values_len - base;
  jvalue *v = arena_alloc(ps->arena, sizeof *v);
  v->kind = J_ARRAY;
  v->u.array.len = n;
  v->u.array.items = arena_alloc(ps->arena, n * sizeof(jvalue *));
  if (n) memcpy(v->u.array.items, ps->values + base, n * sizeof(jvalue *));
  ps->values_len = base;
  return v;
}

static int member_cmp(const void *a, const void *b) {
  const jmember *x = a, *y = b;
  int c = slice_cmp(x->key, y->key);
  if (c) return c;
  return x->order < y->order ? -1 : x->order > y->order;
}

// Sorts members by key (equal keys in input order) and, if `dedupe`, drops all but the last of
// equal keys.
static size_t sort_members(jmember *m, size_t n, bool dedupe) {
  if (n < 2) return n;
  qsort(m, n, sizeof *m, member_cmp);
  if (!dedupe) return n;
  size_t out = 0;
  for (size_t i = 0; i < n; i++) {
    if (i + 1 < n && slice_cmp(m[i].key, m[i + 1].key) == 0) continue;
    m[out++] = m[i];
  }
  return out;
}

static jvalue *parse_object(parser *ps) {
  if (--ps->depth_left == 0) return fail(ps, "recursion limit exceeded");
  ps->p++;  // '{'
  size_t base = ps->members_len;
  skip_ws(ps);
  if (ps->p < ps->end && *ps->p == '}') {
    ps->p++;
  } else {
    for (size_t order = 0;; order++) {
      skip_ws(ps);
      if (ps->p == ps->end) return fail(ps, "EOF while parsing an object");
      if (*ps->p != '"') return fail(ps, "key must be a string");
      slice key;
      if (!parse_string(ps, &key)) return NULL;
      skip_ws(ps);
      if (ps->p == ps->end) return fail(ps, "EOF while parsing an object");
      if (*ps->p != ':') return fail(ps, "expected `:`");
      ps->p++;
      jvalue *value = parse_value(ps);
      if (!value) return NULL;
      if (ps->members_len == ps->members_cap) {
        ps->members_cap = ps->members_cap ? ps->members_cap * 2 : 64;
        ps->members = xrealloc(ps->members, ps->members_cap * sizeof *ps->members);
      }
      ps->members[ps->members_len++] = (jmember){key, value, order};
      skip_ws(ps);
      if (ps->p == ps->end) return fail(ps, "EOF while parsing an object");
      char c = *ps->p++;
      if (c == '}') break;
      if (c != ',') return ps->p--, fail(ps, "expected `,` or `}`");
    }
  }
  ps->depth_left++;
  jmember *members = ps->members + base;
  size_t n = ps->members_len - base;
  ps->members_len = base;  // the slots stay valid until the next push

  jvalue *v = arena_alloc(ps->arena, sizeof *v);
  v->kind = J_OBJECT;
  v->u.object.items = arena_alloc(ps->arena, n * sizeof(jmember));
  if (n) memcpy(v->u.object.items, members, n * sizeof(jmember));
  v->u.object.len = sort_members(v->u.object.items, n, ps->payload);
  return v;
}

static jvalue *parse_value(parser *ps) {
  skip_ws(ps);
  if (ps->p == ps->end) return fail(ps, "EOF while parsing a value");
  switch (*ps->p) {
    case '{': return parse_object(ps);
    case '[': return parse_array(ps);
    case '"': {
      slice s;
      return parse_string(ps, &s) ? new_text(ps, J_STRING, s) : NULL;
    }
    case 't': return parse_literal(ps, "true", &TRUE_VALUE);
    case 'f': return parse_literal(ps, "false", &FALSE_VALUE);
    case 'n': return parse_literal(ps, "null", &NULL_VALUE);
    case '-':
    case '0': case '1': case '2': case '3': case '4':
    case '5': case '6': case '7': case '8': case '9':
      return parse_number(ps);
    default: return fail(ps, "expected value");
  }
}

// A whole JSON text: one value, surrounded by optional whitespace.
static jvalue *parse_document(parser *ps) {
  jvalue *v = parse_value(ps);
  if (!v) return NULL;
  skip_ws(ps);
  if (ps->p != ps->end) return fail(ps, "trailing characters");
  return v;
}

// Looks a key up in a (sorted) object: the first member with that key, or NULL.
static jmember *object_find(const jvalue *obj, slice key) {
  size_t lo = 0, hi = obj->u.object.len;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (slice_cmp(obj->u.object.items[mid].key, key) < 0) lo = mid + 1;
    else hi = mid;
  }
  if (lo < obj->u.object.len && slice_cmp(obj->u.object.items[lo].key, key) == 0)
    return &obj->u.object.items[lo];
  return NULL;
}

// ---------------------------------------------------------------------------------------------
// The serializer: compact, as serde_json's `Value::to_string`.

static void write_string(buffer *b, slice s) {
  static const char hex[] = "0123456789abcdef";
  buf_reserve(b, s.len + 2);
  buf_byte(b, '"');
  size_t run = 0;  // start of the bytes not yet written
  for (size_t i = 0; i < s.len; i++) {
    unsigned char c = (unsigned char)s.ptr[i];
    if (c >= 0x20 && c != '"' && c != '\\') continue;
    buf_put(b, s.ptr + run, i - run);
    run = i + 1;
    switch (c) {
      case '"': buf_put(b, "\\\"", 2); break;
      case '\\': buf_put(b, "\\\\", 2); break;
      case '\b': buf_put(b, "\\b", 2); break;
      case '\f': buf_put(b, "\\f", 2); break;
      case '\n': buf_put(b, "\\n", 2); break;
      case '\r': buf_put(b, "\\r", 2); break;
      case '\t': buf_put(b, "\\t", 2); break;
      default: {
        char u[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 0xF]};
        buf_put(b, u, 6);
      }
    }
  }
  buf_put(b, s.ptr + run, s.len - run);
  buf_byte(b, '"');
}

// The number token verbatim, its exponent written `e` plus a sign (`1E7` -> `1e+7`).
static void write_number(buffer *b, slice s) {
  for (size_t i = 0; i < s.len; i++) {
    if (s.ptr[i] != 'e' && s.ptr[i] != 'E') continue;
    buf_put(b, s.ptr, i);
    buf_byte(b, 'e');
    if (i + 1 < s.len && s.ptr[i + 1] != '+' && s.ptr[i + 1] != '-') buf_byte(b, '+');
    buf_put(b, s.ptr + i + 1, s.len - i - 1);
    return;
  }
  buf_put(b, s.ptr, s.len);
}

static void write_value(buffer *b, const jvalue *v) {
  switch (v->kind) {
    case J_NULL: buf_put(b, "null", 4); break;
    case J_FALSE: buf_put(b, "false", 5); break;
    case J_TRUE: buf_put(b, "true", 4); break;
    case J_NUMBER: write_number(b, v->u.text); break;
    case J_STRING: write_string(b, v->u.text); break;
    case J_ARRAY:
      buf_byte(b, '[');
      for (size_t i = 0; i < v->u.array.len; i++) {
        if (i) buf_byte(b, ',');
        write_value(b, v->u.array.items[i]);
      }
      buf_byte(b, ']');
      break;
    case J_OBJECT:
      buf_byte(b, '{');
      for (size_t i = 0; i < v->u.object.len; i++) {
        if (i) buf_byte(b, ',');
        write_string(b, v->u.object.items[i].key);
        buf_byte(b, ':');
        write_value(b, v->u.object.items[i].value);
      }
      buf_byte(b, '}');
      break;
  }
}

// ---------------------------------------------------------------------------------------------
// Config

// The configured field names (owned copies).
static slice *g_fields;
static size_t g_fields_len;

static void fields_clear(void) {
  for (size_t i = 0; i < g_fields_len; i++) free((void *)g_fields[i].ptr);
  free(g_fields);
  g_fields = NULL;
  g_fields_len = 0;
}

// Decodes the UTF-8 char at p (valid UTF-8: the config is a Rust string); sets *len.
static uint32_t utf8_decode(const unsigned char *p, size_t *len) {
  if (p[0] < 0x80) return *len = 1, p[0];
  if (p[0] < 0xE0) return *len = 2, (uint32_t)(p[0] & 0x1F) << 6 | (p[1] & 0x3F);
  if (p[0] < 0xF0)
    return *len = 3, (uint32_t)(p[0] & 0x0F) << 12 | (uint32_t)(p[1] & 0x3F) << 6 | (p[2] & 0x3F);
  return *len = 4, (uint32_t)(p[0] & 0x07) << 18 | (uint32_t)(p[1] & 0x3F) << 12 |
                       (uint32_t)(p[2] & 0x3F) << 6 | (p[3] & 0x3F);
}

// Unicode White_Space, as Rust's `char::is_whitespace`.
static bool is_unicode_space(uint32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
         c == 0x205F || c == 0x3000;
}

// Rust's `str::trim`.
static slice trim(slice s) {
  const unsigned char *p = (const unsigned char *)s.ptr, *end = p + s.len;
  size_t n;
  while (p < end && is_unicode_space(utf8_decode(p, &n))) p += n;
  while (end > p) {
    const unsigned char *q = end - 1;
    while (q > p && (*q & 0xC0) == 0x80) q--;  // back to the start of the last char
    if (!is_unicode_space(utf8_decode(q, &n))) break;
    end = q;
  }
  return (slice){(const char *)p, (size_t)(end - p)};
}

// serde's words for a value of the wrong type: `string "x"`, `integer `1``, `map`, ...
static void describe(buffer *b, const jvalue *v) {
  switch (v->kind) {
    case J_NULL: buf_str(b, "null"); break;
    case J_FALSE: buf_str(b, "boolean `false`"); break;
    case J_TRUE: buf_str(b, "boolean `true`"); break;
    case J_NUMBER: {
      bool integer = true;
      for (size_t i = 0; i < v->u.text.len; i++)
        if (!is_digit(v->u.text.ptr[i]) && v->u.text.ptr[i] != '-') integer = false;
      buf_str(b, integer ? "integer `" : "floating point `");
      write_number(b, v->u.text);
      buf_byte(b, '`');
      break;
    }
    case J_STRING: buf_str(b, "string "); write_string(b, v->u.text); break;
    case J_ARRAY: buf_str(b, "sequence"); break;
    case J_OBJECT: buf_str(b, "map"); break;
  }
}

static void invalid_type(buffer *msg, const jvalue *v, const char *expected) {
  buf_str(msg, "invalid type: ");
  describe(msg, v);
  buf_str(msg, ", expected ");
  buf_str(msg, expected);
}

// Reads `fields` (a list of strings) into g_fields, or writes why not into msg.
static bool load_fields(const jvalue *list, buffer *msg) {
  if (list->kind != J_ARRAY) return invalid_type(msg, list, "a sequence"), false;
  size_t n = list->u.array.len;
  for (size_t i = 0; i < n; i++)
    if (list->u.array.items[i]->kind != J_STRING)
      return invalid_type(msg, list->u.array.items[i], "a string"), false;
  g_fields = xmalloc(n * sizeof *g_fields);
  for (size_t i = 0; i < n; i++) {
    slice s = list->u.array.items[i]->u.text;
    char *copy = xmalloc(s.len);
    memcpy(copy, s.ptr, s.len);
    g_fields[i] = (slice){copy, s.len};
  }
  g_fields_len = n;
  return true;
}

// Parses the config as the Rust plugin's `#[serde(default)] struct Config { fields: Vec<String> }`
// (a map with an optional `fields`, other keys ignored, or a one-element sequence) into
// g_fields. Returns false with the error message in *err (malloc'ed, starting with
// `redact config: `, worded as serde's but without its positions except for syntax errors).
static bool load_config(slice text, handler_string_t *err) {
  fields_clear();
  text = trim(text);
  if (text.len == 0 || slice_eq(text, "null", 4)) return true;

  arena a = {0};
  parser ps;
  parser_init(&ps, &a, text.ptr, text.len, false);
  jvalue *cfg = parse_document(&ps);
  buffer msg = {0};
  buf_str(&msg, "redact config: ");
  bool ok = true;
  if (!cfg) {
    size_t line = 1, column = 1;
    for (const char *p = text.ptr; p < ps.error_at; p++) {
      if (*p == '\n') line++, column = 1;
      else column++;
    }
    buf_str(&msg, ps.error);
    buf_str(&msg, " at line ");
    buf_uint(&msg, line);
    buf_str(&msg, " column ");
    buf_uint(&msg, column);
    ok = false;
  } else if (cfg->kind == J_OBJECT) {
    // The config's objects keep duplicate keys (sorted next to each other, in input order):
    // serde refuses a second `fields`.
    jmember *f = object_find(cfg, (slice){"fields", 6});
    jmember *end = cfg->u.object.items + cfg->u.object.len;
    if (f && f + 1 < end && slice_eq(f[1].key, "fields", 6)) {
      buf_str(&msg, "duplicate field `fields`");
      ok = false;
    } else if (f) {
      ok = load_fields(f->value, &msg);
    }
  } else if (cfg->kind == J_ARRAY) {
    if (cfg->u.array.len > 1) {
      buf_str(&msg, "trailing characters");
      ok = false;
    } else if (cfg->u.array.len == 1) {
      ok = load_fields(cfg->u.array.items[0], &msg);
    }
  } else {
    invalid_type(&msg, cfg, "struct Config");
    ok = false;
  }
  parser_free(&ps);
  arena_free(&a);

  if (ok) {
    free(msg.ptr);
    return true;
  }
  fields_clear();
  err->ptr = (uint8_t *)msg.ptr;
  err->len = msg.len;
  return false;
}

// ---------------------------------------------------------------------------------------------
// Redaction

static bool contains(const char *hay, size_t hay_len, slice needle) {
  if (needle.len == 0) return true;
  if (needle.len > hay_len) return false;
  const char *last = hay + (hay_len - needle.len);
  for (const char *p = hay; p <= last; p++) {
    p = memchr(p, needle.ptr[0], (size_t)(last - p) + 1);
    if (!p) return false;
    if (memcmp(p, needle.ptr, needle.len) == 0) return true;
  }
  return false;
}

// Redacts one payload. Returns the number of fields redacted; when not 0, *out is the new
// payload (malloc'ed). The arena holds the tree and is reset by the caller.
static uint64_t redact_payload(arena *a, const handler_string_t *payload, handler_string_t *out) {
  const char *text = (const char *)payload->ptr;
  size_t len = payload->len;

  // Cheap pre-check: most payloads name none of the fields.
  bool named = false;
  for (size_t i = 0; i < g_fields_len && !named; i++) named = contains(text, len, g_fields[i]);
  if (!named) return 0;

  parser ps;
  parser_init(&ps, a, text, len, true);
  jvalue *root = parse_document(&ps);
  parser_free(&ps);
  if (!root || root->kind != J_OBJECT) return 0;

  uint64_t n = 0;
  for (size_t i = 0; i < g_fields_len; i++) {
    jmember *m = object_find(root, g_fields[i]);
    if (m) {
      m->value = &REDACTED_VALUE;
      n++;
    }
  }
  if (n == 0) return 0;

  buffer b = {0};
  buf_reserve(&b, len + 16);
  write_value(&b, root);
  out->ptr = (uint8_t *)b.ptr;
  out->len = b.len;
  return n;
}

// ---------------------------------------------------------------------------------------------
// Exports
//
// Ownership (see the generated handler.c): the arguments of an exported function belong to it
// and must be freed with the generated `*_free` helpers; what it returns is freed by the
// generated `cabi_post_*` functions after the host has read it, so every string and list in a
// return value must come from malloc (or have length 0).

bool exports_handler_init(handler_string_t *config, handler_string_t *err) {
  bool ok = load_config((slice){(const char *)config->ptr, config->len}, err);
  handler_string_free(config);
  if (!ok) return false;
  if (g_fields_len == 0) {
    handler_string_t warning;
    handler_string_set(&warning, "no `fields` configured: nothing will be redacted");
    outrigger_plugin_host_log(OUTRIGGER_PLUGIN_TYPES_LEVEL_WARN, &warning);
  }
  return true;
}

void exports_handler_on_batch(handler_list_event_t *events, handler_list_verdict_t *ret) {
  size_t n = events->len;
  handler_verdict_t *verdicts = n ? xmalloc(n * sizeof *verdicts) : NULL;
  arena a = {0};
  uint64_t redacted = 0;

  for (size_t i = 0; i < n; i++) {
    handler_event_t *ev = &events->ptr[i];
    handler_string_t payload;
    uint64_t count = redact_payload(&a, &ev->payload, &payload);
    arena_reset(&a);
    if (count) {
      redacted += count;
      handler_string_free(&ev->payload);
      ev->payload = payload;
      verdicts[i].tag = OUTRIGGER_PLUGIN_TYPES_VERDICT_REPLACE;
      verdicts[i].val.replace = *ev;  // the event's strings now belong to the verdict
    } else {
      verdicts[i].tag = OUTRIGGER_PLUGIN_TYPES_VERDICT_KEEP;
      handler_event_free(ev);
    }
  }
  arena_free(&a);
  // The events were freed or moved one by one: only the list's array is left.
  if (n) free(events->ptr);
  events->ptr = NULL;
  events->len = 0;

  if (redacted) {
    handler_string_t name;
    handler_string_set(&name, "redacted");
    outrigger_plugin_host_counter_add(&name, redacted);
  }
  ret->ptr = verdicts;
  ret->len = n;
}
