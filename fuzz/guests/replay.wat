;; A WASM provider that replays a script from the fuzzer: what it hands out, how many it
;; claims, and whether it takes buffers back. The script arrives as the `script` setting,
;; each byte b written as the character U+0100+b (two bytes of UTF-8), so any bytes pass
;; through the host's key=value settings.
;;
;; Per alloc_bulk call, one byte: its low 7 bits a count (which may exceed `max`), its top
;; bit the form of the descriptors that follow: raw (16 script bytes each: offset, len,
;; id), or built (2 bytes each: id b0 at 131072 + 64*b0, plus b1 & 7 to misalign, length
;; 32 when b1 & 0x80 else 64). Per release_bulk call, one byte: 0xff refuses. An exhausted
;; script hands out nothing and takes everything back.
(module
  (memory (export "memory") 4)
  (global $len (mut i32) (i32.const 0))
  (global $at (mut i32) (i32.const 0))
  (func (export "mpx_abi_version") (result i32) i32.const 1)
  (func (export "mpx_scratch") (param i32) (result i32) i32.const 1024)
  (func (export "mpx_init") (param i32 i32 i32) (param $cfg i32) (param $n i32) (result i32)
    (local $i i32) (local $o i32)
    (local.set $i (i32.add (local.get $cfg) (i32.const 7)))
    (block $done (loop $l
      (br_if $done (i32.ge_u (i32.add (local.get $i) (i32.const 1))
                             (i32.add (local.get $cfg) (local.get $n))))
      (br_if $done (i32.ge_u (local.get $o) (i32.const 32768)))
      (i32.store8 (i32.add (i32.const 65536) (local.get $o))
        (i32.sub
          (i32.or
            (i32.shl (i32.and (i32.load8_u (local.get $i)) (i32.const 0x1f)) (i32.const 6))
            (i32.and (i32.load8_u offset=1 (local.get $i)) (i32.const 0x3f)))
          (i32.const 0x100)))
      (local.set $o (i32.add (local.get $o) (i32.const 1)))
      (local.set $i (i32.add (local.get $i) (i32.const 2)))
      (br $l)))
    (global.set $len (local.get $o))
    i32.const 0)
  (func (export "mpx_info") (param $out i32) (result i32)
    (i32.store (local.get $out) (i32.const 64))
    (i32.store offset=4 (local.get $out) (i32.const 8))
    (i32.store offset=8 (local.get $out) (i32.const 256))
    (i32.store offset=12 (local.get $out) (i32.const 0))
    i32.const 0)
  (func $byte (result i32)
    (local $b i32)
    (local.set $b (i32.load8_u (i32.add (i32.const 65536) (global.get $at))))
    (global.set $at (i32.add (global.get $at) (i32.const 1)))
    (local.get $b))
  (func (export "mpx_alloc_bulk") (param $out i32) (param $max i32) (result i32)
    (local $mode i32) (local $k i32) (local $d i32) (local $b0 i32) (local $b1 i32)
    (if (i32.ge_u (global.get $at) (global.get $len)) (then (return (i32.const 0))))
    (local.set $mode (call $byte))
    (block $done (loop $l
      (br_if $done (i32.ge_u (local.get $k) (i32.and (local.get $mode) (i32.const 0x7f))))
      (local.set $d (i32.add (local.get $out) (i32.mul (local.get $k) (i32.const 16))))
      (if (i32.and (local.get $mode) (i32.const 0x80))
        (then
          (br_if $done (i32.gt_u (i32.add (global.get $at) (i32.const 2)) (global.get $len)))
          (local.set $b0 (call $byte))
          (local.set $b1 (call $byte))
          (i64.store (local.get $d)
            (i64.extend_i32_u
              (i32.add (i32.add (i32.const 131072) (i32.mul (local.get $b0) (i32.const 64)))
                       (i32.and (local.get $b1) (i32.const 7)))))
          (i32.store offset=8 (local.get $d)
            (select (i32.const 32) (i32.const 64) (i32.and (local.get $b1) (i32.const 0x80))))
          (i32.store offset=12 (local.get $d) (local.get $b0)))
        (else
          (br_if $done (i32.gt_u (i32.add (global.get $at) (i32.const 16)) (global.get $len)))
          (i64.store (local.get $d)
            (i64.load (i32.add (i32.const 65536) (global.get $at))))
          (i64.store offset=8 (local.get $d)
            (i64.load offset=8 (i32.add (i32.const 65536) (global.get $at))))
          (global.set $at (i32.add (global.get $at) (i32.const 16)))))
      (local.set $k (i32.add (local.get $k) (i32.const 1)))
      (br $l)))
    (local.get $k))
  (func (export "mpx_release_bulk") (param i32 i32) (result i32)
    (if (i32.lt_u (global.get $at) (global.get $len))
      (then (if (i32.eq (call $byte) (i32.const 0xff)) (then (return (i32.const -3))))))
    i32.const 0))
