//! Constant arguments of an SQL-level `EXECUTE` that route the statement (issue 15):
//! PostgreSQL evaluates each argument once and coerces it to the parameter's type
//! (`EvaluateParams` in `commands/prepare.c`, assignment coercion), so the router can
//! route by the value when it computes that value exactly as PostgreSQL does:
//!
//! - integer constant expressions of `+ - * / %`, unary signs and parentheses, typed
//!   as PostgreSQL types them (a literal is `integer` when it fits, else `bigint`; an
//!   operation on two `integer`s is `integer`, with `bigint` on either side `bigint`),
//!   and abandoned where PostgreSQL would raise an error (overflow, division by zero);
//! - a `numeric` constant (`3.0`) for an integer parameter, rounded half away from zero
//!   as `numeric_int8` does.
//!
//! Anything else (`1.5 * 2`, `^`, functions, casts) is not evaluated here, and such an
//! argument still routes nothing.

use crate::parse::Tok;

/// True for a number token of digits only (an `integer` or `bigint` literal, or a
/// `numeric` one beyond `bigint`'s range).
pub(crate) fn is_integer(n: &str) -> bool {
    !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
}

/// An integer value with the type PostgreSQL gives it.
#[derive(Clone, Copy)]
enum Int {
    Int4(i32),
    Int8(i64),
}

impl Int {
    fn wide(self) -> i64 {
        match self {
            Int::Int4(v) => i64::from(v),
            Int::Int8(v) => v,
        }
    }
}

/// The value of an integer constant expression (see the module doc), `None` if the
/// tokens are anything else or PostgreSQL would raise an error computing it.
pub(crate) fn integer_expr(toks: &[Tok<'_>]) -> Option<i64> {
    let mut p = Eval { toks, at: 0 };
    let v = p.sum()?;
    (p.at == toks.len()).then(|| v.wide())
}

struct Eval<'t, 'a> {
    toks: &'t [Tok<'a>],
    at: usize,
}

impl<'a> Eval<'_, 'a> {
    fn peek(&self) -> Option<Tok<'a>> {
        self.toks.get(self.at).copied()
    }

    /// `product (('+' | '-') product)*`
    fn sum(&mut self) -> Option<Int> {
        let mut v = self.product()?;
        while let Some(Tok::Punct(op @ (b'+' | b'-'))) = self.peek() {
            self.at += 1;
            let r = self.product()?;
            v = binary(op, v, r)?;
        }
        Some(v)
    }

    /// `unary (('*' | '/' | '%') unary)*`
    fn product(&mut self) -> Option<Int> {
        let mut v = self.unary()?;
        while let Some(Tok::Punct(op @ (b'*' | b'/' | b'%'))) = self.peek() {
            self.at += 1;
            let r = self.unary()?;
            v = binary(op, v, r)?;
        }
        Some(v)
    }

    /// Unary minus and plus bind tighter than `*` in PostgreSQL's grammar. Two
    /// operator characters in a row would lex as one operator (`--`, `+-`): refused.
    fn unary(&mut self) -> Option<Int> {
        match self.peek()? {
            Tok::Punct(op @ (b'-' | b'+')) => {
                self.at += 1;
                if matches!(self.peek()?, Tok::Punct(b'-' | b'+')) {
                    return None;
                }
                let v = self.unary()?;
                match (op, v) {
                    (b'+', v) => Some(v),
                    (_, Int::Int4(x)) => x.checked_neg().map(Int::Int4),
                    (_, Int::Int8(x)) => x.checked_neg().map(Int::Int8),
                }
            }
            Tok::Punct(b'(') => {
                self.at += 1;
                let v = self.sum()?;
                if self.peek()? != Tok::Punct(b')') {
                    return None;
                }
                self.at += 1;
                Some(v)
            }
            Tok::Number(n) if is_integer(n) => {
                self.at += 1;
                match n.parse::<i32>() {
                    Ok(v) => Some(Int::Int4(v)),
                    Err(_) => n.parse::<i64>().ok().map(Int::Int8),
                }
            }
            _ => None,
        }
    }
}

fn binary(op: u8, l: Int, r: Int) -> Option<Int> {
    match (l, r) {
        (Int::Int4(a), Int::Int4(b)) => {
            let v = match op {
                b'+' => a.checked_add(b),
                b'-' => a.checked_sub(b),
                b'*' => a.checked_mul(b),
                b'/' => a.checked_div(b),
                // int4mod: x % -1 is 0 in PostgreSQL (checked_rem refuses MIN % -1).
                b'%' if b == -1 => Some(0),
                b'%' => a.checked_rem(b),
                _ => None,
            };
            v.map(Int::Int4)
        }
        (l, r) => {
            let (a, b) = (l.wide(), r.wide());
            let v = match op {
                b'+' => a.checked_add(b),
                b'-' => a.checked_sub(b),
                b'*' => a.checked_mul(b),
                b'/' => a.checked_div(b),
                b'%' if b == -1 => Some(0),
                b'%' => a.checked_rem(b),
                _ => None,
            };
            v.map(Int::Int8)
        }
    }
}

/// A `numeric` constant written `[-]digits[.digits]` rounded to an integer half away
/// from zero (`numeric_int8`), `None` for an exponent or a value beyond `bigint`.
pub(crate) fn round_numeric(text: &str) -> Option<i64> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    if !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let int = int.trim_start_matches('0');
    if int.len() > 19 {
        return None;
    }
    let mut v: i128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    if frac.as_bytes().first().is_some_and(|d| *d >= b'5') {
        v += 1;
    }
    if negative {
        v = -v;
    }
    i64::try_from(v).ok()
}

#[cfg(test)]
mod tests {
    use super::{integer_expr, round_numeric};
    use crate::parse::{tokens, Tok};

    fn eval(s: &str) -> Option<i64> {
        let t: Vec<Tok<'_>> = tokens(s).iter().map(|t| t.tok).collect();
        integer_expr(&t)
    }

    #[test]
    fn integer_expressions_as_postgres_computes_them() {
        assert_eq!(eval("1 + 2"), Some(3));
        assert_eq!(eval("2 + 3 * 4"), Some(14));
        assert_eq!(eval("(2 + 3) * -4"), Some(-20));
        assert_eq!(eval("-7 / 2"), Some(-3));
        assert_eq!(eval("-7 % 3"), Some(-1));
        assert_eq!(eval("5"), Some(5));
        // integer overflow is an error in PostgreSQL; bigint arithmetic is not.
        assert_eq!(eval("2147483647 + 1"), None);
        assert_eq!(eval("2147483648 + 1"), Some(2_147_483_649));
        assert_eq!(eval("1 / 0"), None);
        assert_eq!(eval("1.5 * 2"), None);
        assert_eq!(eval("2 ^ 3"), None);
        assert_eq!(eval("1 - -1"), Some(2));
        assert_eq!(eval("abs(1)"), None);
        assert_eq!(eval("1 +"), None);
    }

    #[test]
    fn numeric_rounds_half_away_from_zero() {
        assert_eq!(round_numeric("3.0"), Some(3));
        assert_eq!(round_numeric("2.5"), Some(3));
        assert_eq!(round_numeric("-2.5"), Some(-3));
        assert_eq!(round_numeric("-2.49"), Some(-2));
        assert_eq!(round_numeric(".5"), Some(1));
        assert_eq!(round_numeric("5."), Some(5));
        assert_eq!(round_numeric("1e3"), None);
        assert_eq!(round_numeric("99999999999999999999.0"), None);
    }
}
