// A Berth command written in C.
//
// It uses the ports (SQL, key-value, blob, config) and outbound HTTP
// (`wasi:http/outgoing-handler`) through the bindings that `wit-bindgen c`
// generates from world.wit, and prints one line per port, like
// guests/python_ports and guests/js_ports:
//
//     sql 1:ada
//     kv hi 2
//     blob hello blob 10
//     config hello
//     config-secret not-granted
//     http 200 pong
//
// Run as `c_ports <host:port>`; the upstream is argv[1]. It is an ordinary
// wasi-libc program: `main`, argv and stdout work through the WASI preview1
// command adapter, which also provides the component's `wasi:cli/run` export.
//
// Build (Debian 12: apt-get install clang-14 lld-14 wasi-libc
// libclang-rt-14-dev-wasm32; wit-bindgen-cli 0.61.1 from crates.io; wasm-tools;
// the adapter artefacts/wasi_snapshot_preview1.command.wasm of the
// wasi-preview1-component-adapter-provider crate at Berth's wasmtime
// version, 48.0.8, as $ADAPTER). `berth wit --out $BW` writes Berth's WIT to
// $BW and the WASI WIT to $BW/wasi:
//
//     # one WIT package directory: Berth's WIT, this world, the WASI deps
//     mkdir -p wit/deps
//     cp $BW/*.wit wit/ && cp world.wit wit/c_ports-world.wit
//     cp $BW/wasi/*.wit wit/deps/
//     wit-bindgen c wit --world c-command --out-dir gen
//     clang-14 --target=wasm32-wasi --sysroot=/usr -O2 -Wall -Wextra -Igen \
//         -nostartfiles main.c command_start.c \
//         gen/c_command.c gen/c_command_component_type.o -o core.wasm
//     wasm-tools component new core.wasm \
//         --adapt wasi_snapshot_preview1=$ADAPTER -o c_ports.wasm
//
// (`-nostartfiles` and command_start.c work around Debian's old wasi-libc:
// see that file.)
//
// Memory rules of the generated bindings (see the comments in
// gen/c_command.h):
// - arguments are borrowed: the caller keeps owning them (so a
//   `c_command_string_set` of a literal is fine and is never freed);
// - `own` resource handles passed as arguments are consumed by the call;
// - everything returned (through `ret` or `err`) belongs to the caller and is
//   released with the matching `*_free` (values) or `*_drop_own` (resources);
// - a `borrow` of an imported resource is just a view of an `own` handle:
//   never `*_drop_borrow` it (that would drop the resource itself).

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "c_command.h"

// Prints `what` to stderr and exits with a failure status.
_Noreturn static void die(const char *what) {
  fprintf(stderr, "c_ports: %s\n", what);
  exit(1);
}

// A component-model string viewing a C string (no copy, nothing to free).
static c_command_string_t str(const char *s) {
  c_command_string_t out;
  c_command_string_set(&out, s);
  return out;
}

// A `list<u8>` viewing a C string's bytes (no copy, nothing to free).
static c_command_list_u8_t bytes(const char *s) {
  return (c_command_list_u8_t){(uint8_t *)s, strlen(s)};
}

// SQL: create a table, insert a row with a parameter, read the rows back.
static void use_sql(void) {
  berth_infra_sql_own_connection_t conn;
  berth_infra_sql_error_t err;
  c_command_string_t name = str("main");
  if (!berth_infra_sql_static_connection_open(&name, &conn, &err))
    die("sql open failed");
  berth_infra_sql_borrow_connection_t db = berth_infra_sql_borrow_connection(conn);

  uint64_t affected;
  berth_infra_sql_list_value_t no_params = {NULL, 0};
  c_command_string_t create =
      str("CREATE TABLE IF NOT EXISTS users (id INTEGER PRIMARY KEY, name TEXT NOT NULL)");
  if (!berth_infra_sql_method_connection_execute(db, &create, &no_params, &affected, &err))
    die("sql create failed");

  // One `?` parameter: the text value 'ada'.
  berth_infra_sql_value_t ada = {.tag = BERTH_INFRA_SQL_VALUE_TEXT};
  ada.val.text = str("ada");
  berth_infra_sql_list_value_t params = {&ada, 1};
  c_command_string_t insert = str("INSERT INTO users (name) VALUES (?)");
  if (!berth_infra_sql_method_connection_execute(db, &insert, &params, &affected, &err))
    die("sql insert failed");

  berth_infra_sql_row_set_t rows;
  c_command_string_t select = str("SELECT id, name FROM users ORDER BY id");
  if (!berth_infra_sql_method_connection_query(db, &select, &no_params, &rows, &err))
    die("sql query failed");
  printf("sql ");
  for (size_t i = 0; i < rows.rows.len; i++) {
    berth_infra_sql_value_t *row = rows.rows.ptr[i].ptr;
    if (rows.rows.ptr[i].len != 2 || row[0].tag != BERTH_INFRA_SQL_VALUE_INT ||
        row[1].tag != BERTH_INFRA_SQL_VALUE_TEXT)
      die("sql row has an unexpected shape");
    printf("%s%" PRId64 ":%.*s", i ? "," : "", row[0].val.int_,
           (int)row[1].val.text.len, (const char *)row[1].val.text.ptr);
  }
  printf("\n");

  berth_infra_sql_row_set_free(&rows);
  berth_infra_sql_connection_drop_own(conn);
}

// Key-value: set and get a key, increment a counter.
static void use_kv(void) {
  berth_infra_kv_own_bucket_t bucket;
  berth_infra_kv_error_t err;
  c_command_string_t name = str("cache");
  if (!berth_infra_kv_static_bucket_open(&name, &bucket, &err))
    die("kv open failed");
  berth_infra_kv_borrow_bucket_t kv = berth_infra_kv_borrow_bucket(bucket);

  c_command_string_t greeting = str("greeting");
  c_command_list_u8_t hi = bytes("hi");
  if (!berth_infra_kv_method_bucket_set(kv, &greeting, &hi, NULL /* no ttl */, &err))
    die("kv set failed");

  c_command_option_list_u8_t value;
  if (!berth_infra_kv_method_bucket_get(kv, &greeting, &value, &err) || !value.is_some)
    die("kv get failed");

  int64_t visits;
  c_command_string_t counter = str("visits");
  if (!berth_infra_kv_method_bucket_increment(kv, &counter, 2, &visits, &err))
    die("kv increment failed");

  printf("kv %.*s %" PRId64 "\n", (int)value.val.len, (const char *)value.val.ptr, visits);

  c_command_option_list_u8_free(&value);
  berth_infra_kv_bucket_drop_own(bucket);
}

// Blob: put an object, get it back, stat its size.
static void use_blob(void) {
  berth_infra_blob_own_container_t container;
  berth_infra_blob_error_t err;
  c_command_string_t name = str("files");
  if (!berth_infra_blob_static_container_open(&name, &container, &err))
    die("blob open failed");
  berth_infra_blob_borrow_container_t files = berth_infra_blob_borrow_container(container);

  c_command_string_t key = str("note.txt");
  c_command_list_u8_t data = bytes("hello blob");
  berth_infra_blob_object_info_t info;
  if (!berth_infra_blob_method_container_put(files, &key, &data, &info, &err))
    die("blob put failed");
  berth_infra_blob_object_info_free(&info);

  c_command_list_u8_t content;
  if (!berth_infra_blob_method_container_get(files, &key, &content, &err))
    die("blob get failed");
  if (!berth_infra_blob_method_container_stat(files, &key, &info, &err))
    die("blob stat failed");

  printf("blob %.*s %" PRIu64 "\n", (int)content.len, (const char *)content.ptr, info.size);

  c_command_list_u8_free(&content);
  berth_infra_blob_object_info_free(&info);
  berth_infra_blob_container_drop_own(container);
}

// The WIT name of a config error variant.
static const char *config_error_name(const berth_infra_config_error_t *err) {
  switch (err->tag) {
  case BERTH_INFRA_CONFIG_ERROR_NOT_GRANTED:
    return "not-granted";
  case BERTH_INFRA_CONFIG_ERROR_UNAVAILABLE:
    return "unavailable";
  default:
    return "unknown";
  }
}

// Config: read a granted key, then one that is not granted.
static void use_config(void) {
  c_command_option_string_t value;
  berth_infra_config_error_t err;

  c_command_string_t greeting = str("greeting");
  if (!berth_infra_config_get(&greeting, &value, &err) || !value.is_some)
    die("config get failed");
  printf("config %.*s\n", (int)value.val.len, (const char *)value.val.ptr);
  c_command_option_string_free(&value);

  // The manifest defines `secret` but does not grant it to this component.
  c_command_string_t secret = str("secret");
  if (berth_infra_config_get(&secret, &value, &err)) {
    printf("config-secret readable\n");
    c_command_option_string_free(&value);
  } else {
    printf("config-secret %s\n", config_error_name(&err));
    berth_infra_config_error_free(&err);
  }
}

// Outbound HTTP: `GET http://<authority>/ping`, printing the status and body.
static void use_http(const char *authority) {
  // The request: its headers (`fields`) are consumed by the constructor; the
  // method defaults to GET.
  wasi_http_types_own_outgoing_request_t request =
      wasi_http_types_constructor_outgoing_request(wasi_http_types_constructor_fields());
  wasi_http_types_borrow_outgoing_request_t req = wasi_http_types_borrow_outgoing_request(request);
  wasi_http_types_scheme_t scheme = {.tag = WASI_HTTP_TYPES_SCHEME_HTTP};
  c_command_string_t host = str(authority);
  c_command_string_t path = str("/ping");
  if (!wasi_http_types_method_outgoing_request_set_scheme(req, &scheme) ||
      !wasi_http_types_method_outgoing_request_set_authority(req, &host) ||
      !wasi_http_types_method_outgoing_request_set_path_with_query(req, &path))
    die("http request is invalid");

  // Send it: `handle` consumes the request and returns a future response.
  wasi_http_types_own_future_incoming_response_t future;
  wasi_http_types_error_code_t code;
  if (!wasi_http_outgoing_handler_handle(request, NULL /* no options */, &future, &code)) {
    fprintf(stderr, "c_ports: http handle failed: error-code %u\n", code.tag);
    wasi_http_types_error_code_free(&code);
    exit(1);
  }

  // Block until the response head has arrived.
  wasi_http_types_borrow_future_incoming_response_t fut =
      wasi_http_types_borrow_future_incoming_response(future);
  wasi_io_poll_own_pollable_t ready = wasi_http_types_method_future_incoming_response_subscribe(fut);
  wasi_io_poll_method_pollable_block(wasi_io_poll_borrow_pollable(ready));
  wasi_io_poll_pollable_drop_own(ready);

  // option<result<result<incoming-response, error-code>>>: `some` now, the
  // outer result is ok on the first `get`, the inner one tells the outcome.
  wasi_http_types_result_result_own_incoming_response_error_code_void_t outcome;
  if (!wasi_http_types_method_future_incoming_response_get(fut, &outcome) || outcome.is_err)
    die("http response is not ready");
  if (outcome.val.ok.is_err) {
    fprintf(stderr, "c_ports: http request failed: error-code %u\n", outcome.val.ok.val.err.tag);
    wasi_http_types_result_result_own_incoming_response_error_code_void_free(&outcome);
    exit(1);
  }
  wasi_http_types_own_incoming_response_t response = outcome.val.ok.val.ok;
  wasi_http_types_borrow_incoming_response_t resp = wasi_http_types_borrow_incoming_response(response);
  wasi_http_types_status_code_t status = wasi_http_types_method_incoming_response_status(resp);

  // Read the body stream until it is closed.
  wasi_http_types_own_incoming_body_t body;
  wasi_http_types_own_input_stream_t stream;
  if (!wasi_http_types_method_incoming_response_consume(resp, &body) ||
      !wasi_http_types_method_incoming_body_stream(wasi_http_types_borrow_incoming_body(body), &stream))
    die("http body is unavailable");
  wasi_io_streams_borrow_input_stream_t in = wasi_io_streams_borrow_input_stream(stream);
  char *text = NULL;
  size_t len = 0;
  for (;;) {
    c_command_list_u8_t chunk;
    wasi_io_streams_stream_error_t stream_err;
    if (!wasi_io_streams_method_input_stream_blocking_read(in, 65536, &chunk, &stream_err)) {
      bool closed = stream_err.tag == WASI_IO_STREAMS_STREAM_ERROR_CLOSED;
      wasi_io_streams_stream_error_free(&stream_err); // drops a last-operation-failed error
      if (!closed)
        die("http body read failed");
      break;
    }
    if (chunk.len) {
      if (!(text = realloc(text, len + chunk.len)))
        die("out of memory");
      memcpy(text + len, chunk.ptr, chunk.len);
      len += chunk.len;
    }
    c_command_list_u8_free(&chunk);
  }

  printf("http %u %.*s\n", status, (int)len, text ? text : "");

  // Children before parents: the stream, the body, the response, the future.
  free(text);
  wasi_io_streams_input_stream_drop_own(stream);
  wasi_http_types_incoming_body_drop_own(body);
  wasi_http_types_incoming_response_drop_own(response);
  wasi_http_types_future_incoming_response_drop_own(future);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: c_ports <host:port>\n");
    return 2;
  }
  use_sql();
  use_kv();
  use_blob();
  use_config();
  use_http(argv[1]);
  return 0;
}
