//! A bound on what a pickle may make before candle's parser builds it.
//!
//! Weight files are untrusted input. candle's pickle parser (`candle_core::pickle::Stack`)
//! builds plain data and runs no code, but it trusts sizes: a memo `GET` clones the whole
//! object it names (eight `GET`/`TUPLE2` pairs double an object eight times: a few hundred
//! bytes of pickle can ask for more memory than any machine has), nesting is unbounded (and
//! Rust drops and formats nested values recursively: a million nested tuples overflow the
//! stack, which no `catch_unwind` catches), `LONG1` shifts past 64 bits (a panic), and a
//! `BINUNICODE` length is allocated before its bytes are read.
//!
//! [`weigh`] walks the opcodes exactly as candle's parser does (the same opcode table,
//! including its reading of `d` as an empty dict), but with a size and a depth in place of
//! each value. It refuses a pickle whose values would cost more than its budget in all (every
//! value made counts once, and a memo clone counts again), nest deeper than [`MAX_DEPTH`],
//! use integers wider than 64 bits or strings longer than the bytes left, or end before its
//! `STOP`. What passes is handed to candle's parser, which then allocates at most about the
//! budget.

/// The deepest nesting accepted. A state dict nests about five deep (dict, parameter,
/// `_rebuild_tensor_v2` arguments, persistent id, storage class).
pub const MAX_DEPTH: u32 = 64;

/// What one value is charged, beside its text: about the size of candle's `Object` and the
/// slot that holds it.
const NODE: u64 = 64;

/// The budget of a pickle of `len` bytes: 64 bytes of values per byte of pickle (a one-byte
/// opcode making one value), plus 1 MiB.
pub fn budget(len: usize) -> u64 {
    (len as u64).saturating_mul(NODE) + (1 << 20)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Mark,
    List,
    Dict,
    /// `collections.OrderedDict` or `defaultdict`: candle's `REDUCE` turns a call of it into a dict.
    DictClass,
    Other,
}

#[derive(Clone, Copy)]
struct V {
    cost: u64,
    depth: u32,
    kind: Kind,
}

struct Walk<'a> {
    bytes: &'a [u8],
    pos: usize,
    stack: Vec<V>,
    memo: std::collections::HashMap<u32, V>,
    spent: u64,
    budget: u64,
}

impl<'a> Walk<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| format!("the pickle ends inside {what} at byte {}", self.pos))?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn line(&mut self, what: &str) -> Result<&'a [u8], String> {
        let rest = &self.bytes[self.pos..];
        let n = memchr_newline(rest)
            .ok_or_else(|| format!("the pickle ends inside {what} at byte {}", self.pos))?;
        self.take(n + 1, what)
    }

    fn charge(&mut self, cost: u64) -> Result<(), String> {
        self.spent = self.spent.saturating_add(cost);
        if self.spent > self.budget {
            return Err(format!(
                "the pickle would build more than {} MiB of values from {} bytes (memo copies or a size it claims)",
                self.budget >> 20,
                self.bytes.len()
            ));
        }
        Ok(())
    }

    fn push(&mut self, v: V) -> Result<(), String> {
        if v.depth > MAX_DEPTH {
            return Err(format!(
                "values nest deeper than {MAX_DEPTH} at byte {}",
                self.pos
            ));
        }
        self.stack.push(v);
        Ok(())
    }

    /// A new value of `own` bytes holding `parts` (moved, not copied).
    fn make(&mut self, own: u64, parts: &[V], kind: Kind) -> Result<(), String> {
        self.charge(own)?;
        let cost = parts.iter().fold(own, |a, p| a.saturating_add(p.cost));
        let depth = parts.iter().map(|p| p.depth + 1).max().unwrap_or(1);
        self.push(V { cost, depth, kind })
    }

    fn pop(&mut self) -> Result<V, String> {
        self.stack
            .pop()
            .ok_or_else(|| format!("pops an empty stack at byte {}", self.pos))
    }

    fn pop_to_mark(&mut self) -> Result<Vec<V>, String> {
        let at = self
            .stack
            .iter()
            .rposition(|v| v.kind == Kind::Mark)
            .ok_or_else(|| format!("no MARK to pop to at byte {}", self.pos))?;
        let items = self.stack.split_off(at + 1);
        self.stack.pop();
        Ok(items)
    }

    /// Adds `items` into the container on top of the stack, which must be `kind`.
    fn fill(&mut self, items: &[V], kind: Kind, op: &str) -> Result<(), String> {
        let pos = self.pos;
        let top = self
            .stack
            .last_mut()
            .ok_or_else(|| format!("{op} on an empty stack at byte {pos}"))?;
        if top.kind != kind {
            return Err(format!(
                "{op} on a value that is not a container at byte {pos}"
            ));
        }
        for v in items {
            top.cost = top.cost.saturating_add(v.cost);
            top.depth = top.depth.max(v.depth + 1);
        }
        if top.depth > MAX_DEPTH {
            return Err(format!("values nest deeper than {MAX_DEPTH} at byte {pos}"));
        }
        Ok(())
    }

    fn memo_get(&mut self, id: u32) -> Result<(), String> {
        let v = *self
            .memo
            .get(&id)
            .ok_or_else(|| format!("memo {id} read before it is written (byte {})", self.pos))?;
        self.charge(v.cost)?;
        self.push(v)
    }

    fn memo_put(&mut self, id: u32) -> Result<(), String> {
        let v = *self
            .stack
            .last()
            .ok_or_else(|| format!("PUT on an empty stack at byte {}", self.pos))?;
        self.charge(v.cost)?;
        self.memo.insert(id, v);
        Ok(())
    }
}

fn memchr_newline(b: &[u8]) -> Option<usize> {
    b.iter().position(|&c| c == b'\n')
}

/// Checks the pickle at the start of `bytes` against `budget` (see the module text) and
/// returns its length, through its `STOP`.
pub fn weigh(bytes: &[u8], budget: u64) -> Result<usize, String> {
    let mut w = Walk {
        bytes,
        pos: 0,
        stack: Vec::new(),
        memo: Default::default(),
        spent: 0,
        budget,
    };
    let leaf = |w: &mut Walk, extra: u64| w.make(NODE + extra, &[], Kind::Other);
    loop {
        let op = w.take(1, "an opcode")?[0];
        match op {
            0x80 => {
                w.take(1, "PROTO")?;
            }
            b'c' => {
                let module = w.line("GLOBAL")?;
                let class = w.line("GLOBAL")?;
                let kind = if module == b"collections\n"
                    && (class == b"OrderedDict\n" || class == b"defaultdict\n")
                {
                    Kind::DictClass
                } else {
                    Kind::Other
                };
                let cost = NODE + (module.len() + class.len()) as u64;
                w.make(cost, &[], kind)?;
            }
            b'K' => {
                w.take(1, "BININT1")?;
                leaf(&mut w, 0)?;
            }
            b'M' => {
                w.take(2, "BININT2")?;
                leaf(&mut w, 0)?;
            }
            b'J' => {
                w.take(4, "BININT")?;
                leaf(&mut w, 0)?;
            }
            b'G' => {
                w.take(8, "BINFLOAT")?;
                leaf(&mut w, 0)?;
            }
            0x8a => {
                let n = w.take(1, "LONG1")?[0] as usize;
                if n > 8 {
                    return Err(format!(
                        "LONG1 of {n} bytes at byte {}: integers wider than 64 bits are not supported",
                        w.pos
                    ));
                }
                w.take(n, "LONG1")?;
                leaf(&mut w, 0)?;
            }
            b'X' => {
                let n = w.u32("BINUNICODE")? as usize;
                w.take(n, "a BINUNICODE string")?;
                leaf(&mut w, n as u64)?;
            }
            b'N' | 0x88 | 0x89 => leaf(&mut w, 0)?,
            b')' => w.make(NODE, &[], Kind::Other)?,
            b']' => w.make(NODE, &[], Kind::List)?,
            // candle reads `d` (DICT) as an empty dict, as `}`.
            b'}' | b'd' => w.make(NODE, &[], Kind::Dict)?,
            b'(' => {
                w.charge(NODE)?;
                w.push(V {
                    cost: NODE,
                    depth: 0,
                    kind: Kind::Mark,
                })?
            }
            b'Q' => {
                let id = w.pop()?;
                w.make(NODE, &[id], Kind::Other)?;
            }
            b't' => {
                let items = w.pop_to_mark()?;
                w.make(NODE, &items, Kind::Other)?;
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(w.pop()?);
                }
                w.make(NODE, &items, Kind::Other)?;
            }
            b'a' => {
                let v = w.pop()?;
                w.fill(&[v], Kind::List, "APPEND")?;
            }
            b'e' => {
                let items = w.pop_to_mark()?;
                w.fill(&items, Kind::List, "APPENDS")?;
            }
            b's' => {
                let v = w.pop()?;
                let k = w.pop()?;
                w.fill(&[k, v], Kind::Dict, "SETITEM")?;
            }
            b'u' => {
                let items = w.pop_to_mark()?;
                if items.len() % 2 != 0 {
                    return Err(format!("SETITEMS with an odd count at byte {}", w.pos));
                }
                w.fill(&items, Kind::Dict, "SETITEMS")?;
            }
            b'b' => {
                let args = w.pop()?;
                let obj = w.pop()?;
                let kind = if obj.kind == Kind::Dict && args.kind == Kind::Dict {
                    Kind::Dict
                } else {
                    Kind::Other
                };
                w.make(NODE, &[obj, args], kind)?;
            }
            b'R' => {
                let args = w.pop()?;
                let callable = w.pop()?;
                if callable.kind == Kind::DictClass {
                    w.make(NODE, &[], Kind::Dict)?;
                } else {
                    w.make(NODE, &[callable, args], Kind::Other)?;
                }
            }
            0x81 => {
                let args = w.pop()?;
                let class = w.pop()?;
                w.make(NODE, &[class, args], Kind::Other)?;
            }
            b'h' => {
                let id = w.take(1, "BINGET")?[0] as u32;
                w.memo_get(id)?;
            }
            b'j' => {
                let id = w.u32("LONG_BINGET")?;
                w.memo_get(id)?;
            }
            b'q' => {
                let id = w.take(1, "BINPUT")?[0] as u32;
                w.memo_put(id)?;
            }
            b'r' => {
                let id = w.u32("LONG_BINPUT")?;
                w.memo_put(id)?;
            }
            b'.' => {
                if w.stack.is_empty() {
                    return Err("STOP on an empty stack".into());
                }
                return Ok(w.pos);
            }
            other => {
                return Err(format!(
                    "opcode 0x{other:02x} at byte {} is not one this reader knows",
                    w.pos - 1
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_pickles_pass_and_report_their_length() {
        // protocol 2: {'a': (1, 2)} then STOP, followed by other bytes.
        let p = b"\x80\x02}q\x00X\x01\x00\x00\x00aK\x01K\x02\x86s.trailing";
        assert_eq!(weigh(p, budget(p.len())), Ok(p.len() - 8));
    }

    #[test]
    fn memo_doubling_is_refused_within_budget() {
        // ']' then 40 times: PUT 0, GET 0, TUPLE2 ... each round doubles the value.
        let mut p = b"\x80\x02]".to_vec();
        for _ in 0..40 {
            p.extend_from_slice(b"q\x00h\x00\x86");
        }
        p.push(b'.');
        let e = weigh(&p, budget(p.len())).unwrap_err();
        assert!(e.contains("more than 1 MiB"), "{e}");
    }

    #[test]
    fn deep_nesting_wide_longs_and_claimed_lengths_are_refused() {
        let mut p = b"\x80\x02)".to_vec();
        p.extend(std::iter::repeat_n(0x85, 100_000));
        p.push(b'.');
        assert!(weigh(&p, budget(p.len()))
            .unwrap_err()
            .contains("nest deeper"));
        let p = b"\x80\x02\x8a\x10AAAAAAAAAAAAAAAA.";
        assert!(weigh(p, budget(p.len()))
            .unwrap_err()
            .contains("wider than 64"));
        let p = b"\x80\x02X\xff\xff\xff\xffab.";
        assert!(weigh(p, budget(p.len()))
            .unwrap_err()
            .contains("ends inside a BINUNICODE"));
        let p = b"\x80\x02K\x01";
        assert!(weigh(p, budget(p.len()))
            .unwrap_err()
            .contains("ends inside an opcode"));
    }
}
