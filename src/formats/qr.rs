//! QR Code encoder (ISO/IEC 18004, model 2): byte mode, versions 1-40, all four error
//! correction levels, Reed-Solomon over GF(256), block interleaving, the eight data masks with
//! penalty scoring, format and version information (BCH codes), and a terminal renderer built
//! from Unicode half blocks.
//!
//! Pure: bytes in, a module matrix out. Used by `access`/`doctor` style commands to print a
//! `tg://proxy?...` link as a scannable code on the terminal.

use std::fmt;

/// Error correction level. `Medium` recovers about 15% of the codewords, `Low` about 7%.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ecc {
    /// ~7% recovery.
    Low,
    /// ~15% recovery.
    Medium,
    /// ~25% recovery.
    Quartile,
    /// ~30% recovery.
    High,
}

impl Ecc {
    fn index(self) -> usize {
        match self {
            Ecc::Low => 0,
            Ecc::Medium => 1,
            Ecc::Quartile => 2,
            Ecc::High => 3,
        }
    }

    /// The two format-information bits of this level (Table 12: L=01, M=00, Q=11, H=10).
    fn format_bits(self) -> u32 {
        match self {
            Ecc::Low => 1,
            Ecc::Medium => 0,
            Ecc::Quartile => 3,
            Ecc::High => 2,
        }
    }
}

/// Why a code could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QrError {
    /// The data does not fit in the largest allowed version at this level; `max` is the
    /// largest byte count that does.
    DataTooLong { len: usize, max: usize },
    /// A forced version outside 1..=40.
    InvalidVersion(u8),
    /// A forced mask outside 0..=7.
    InvalidMask(u8),
}

impl fmt::Display for QrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QrError::DataTooLong { len, max } => {
                write!(
                    f,
                    "data too long for a QR code: {len} bytes (at most {max})"
                )
            }
            QrError::InvalidVersion(v) => write!(f, "invalid QR version {v} (1-40)"),
            QrError::InvalidMask(m) => write!(f, "invalid QR mask {m} (0-7)"),
        }
    }
}

impl std::error::Error for QrError {}

/// A finished symbol: `size` x `size` modules, without quiet zone.
#[derive(Clone, PartialEq, Eq)]
pub struct QrCode {
    /// Modules per side: `4 * version + 17`.
    pub size: usize,
    /// 1..=40.
    pub version: u8,
    /// The error correction level used.
    pub ecc: Ecc,
    /// The data mask applied (0..=7).
    pub mask: u8,
    modules: Vec<bool>,
}

impl QrCode {
    /// Whether the module at column `x`, row `y` is dark. Outside the symbol (the quiet zone
    /// and beyond) every module is light.
    pub fn module(&self, x: usize, y: usize) -> bool {
        if x >= self.size || y >= self.size {
            return false;
        }
        self.modules
            .get(y * self.size + x)
            .copied()
            .unwrap_or(false)
    }
}

impl fmt::Debug for QrCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "QrCode {{ version: {}, ecc: {:?}, mask: {}, size: {} }}",
            self.version, self.ecc, self.mask, self.size
        )?;
        f.write_str(&to_text(self))
    }
}

/// Encodes `data` in byte mode at level `ecc`, in the smallest version that holds it, with the
/// mask of lowest penalty.
pub fn encode(data: &[u8], ecc: Ecc) -> Result<QrCode, QrError> {
    encode_with(data, ecc, None, None)
}

/// Like [`encode`], with an optional forced version (1..=40) and forced mask (0..=7).
pub fn encode_with(
    data: &[u8],
    ecc: Ecc,
    version: Option<u8>,
    mask: Option<u8>,
) -> Result<QrCode, QrError> {
    if let Some(m) = mask {
        if m > 7 {
            return Err(QrError::InvalidMask(m));
        }
    }
    let version = match version {
        Some(v) => {
            if !(1..=40).contains(&v) {
                return Err(QrError::InvalidVersion(v));
            }
            if data.len() > byte_capacity(v, ecc) {
                return Err(QrError::DataTooLong {
                    len: data.len(),
                    max: byte_capacity(v, ecc),
                });
            }
            v
        }
        None => (1..=40u8)
            .find(|&v| data.len() <= byte_capacity(v, ecc))
            .ok_or(QrError::DataTooLong {
                len: data.len(),
                max: byte_capacity(40, ecc),
            })?,
    };
    let codewords = add_ecc_and_interleave(&data_codewords(data, version, ecc), version, ecc);
    let mut m = Matrix::new(version);
    m.draw_function_patterns();
    m.draw_codewords(&codewords);
    let mask = match mask {
        Some(k) => k,
        None => {
            let mut best = (u32::MAX, 0u8);
            for k in 0..8u8 {
                m.apply_mask(k);
                m.draw_format_bits(ecc, k);
                let p = m.penalty();
                if p < best.0 {
                    best = (p, k);
                }
                m.apply_mask(k); // XOR again undoes it
            }
            best.1
        }
    };
    m.apply_mask(mask);
    m.draw_format_bits(ecc, mask);
    Ok(QrCode {
        size: m.size,
        version,
        ecc,
        mask,
        modules: m.modules,
    })
}

/// Renders `code` for a terminal, two module rows per text line, with a 4-module quiet zone:
/// `█` both halves drawn, `▀` top half, `▄` bottom half, space neither. With `invert == false`
/// the glyphs draw the dark modules (for dark-on-light terminals); with `invert == true` they
/// draw the light modules and the quiet zone (for light-on-dark terminals, the usual case).
/// Every line ends with `\n`.
pub fn render_terminal(code: &QrCode, invert: bool) -> String {
    const QUIET: usize = 4;
    let full = code.size + 2 * QUIET;
    // Is the pixel at (x, y) of the padded image drawn? Rows past the padded image (the odd
    // last half line) are never drawn.
    let drawn = |x: usize, y: usize| -> bool {
        if y >= full {
            return false;
        }
        let dark = x >= QUIET && y >= QUIET && code.module(x - QUIET, y - QUIET);
        dark != invert
    };
    let lines = full.div_ceil(2);
    let mut out = String::with_capacity(lines * (full * 3 + 1));
    for line in 0..lines {
        let y = line * 2;
        for x in 0..full {
            out.push(match (drawn(x, y), drawn(x, y + 1)) {
                (true, true) => '█',
                (true, false) => '▀',
                (false, true) => '▄',
                (false, false) => ' ',
            });
        }
        out.push('\n');
    }
    out
}

/// The matrix as text, one row per line, `#` dark and `.` light (no quiet zone). Stable: used
/// by the known-answer tests.
pub fn to_text(code: &QrCode) -> String {
    let mut s = String::with_capacity(code.size * (code.size + 1));
    for y in 0..code.size {
        for x in 0..code.size {
            s.push(if code.module(x, y) { '#' } else { '.' });
        }
        s.push('\n');
    }
    s
}

/// A plain (P1) PBM image of the code with a `border`-module quiet zone, each module `scale`
/// pixels wide: something any image tool or QR reader can open.
pub fn to_pbm(code: &QrCode, scale: usize, border: usize) -> Vec<u8> {
    let scale = scale.clamp(1, 64);
    let border = border.min(64);
    let px = (code.size + 2 * border) * scale;
    let mut out = format!("P1\n{px} {px}\n").into_bytes();
    for py in 0..px {
        for (i, pxx) in (0..px).enumerate() {
            let (mx, my) = (pxx / scale, py / scale);
            let dark = mx >= border && my >= border && code.module(mx - border, my - border);
            out.push(if dark { b'1' } else { b'0' });
            out.push(if i + 1 == px { b'\n' } else { b' ' });
        }
    }
    out
}

// ---- capacity tables (ISO/IEC 18004 Table 9), index [ecc][version] ----

const ECC_PER_BLOCK: [[u8; 41]; 4] = [
    [
        0, 7, 10, 15, 20, 26, 18, 20, 24, 30, 18, 20, 24, 26, 30, 22, 24, 28, 30, 28, 28, 28, 28,
        30, 30, 26, 28, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30,
    ],
    [
        0, 10, 16, 26, 18, 24, 16, 18, 22, 22, 26, 30, 22, 22, 24, 24, 28, 28, 26, 26, 26, 26, 28,
        28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28,
    ],
    [
        0, 13, 22, 18, 26, 18, 24, 18, 22, 20, 24, 28, 26, 24, 20, 30, 24, 28, 28, 26, 30, 28, 30,
        30, 30, 30, 28, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30,
    ],
    [
        0, 17, 28, 22, 16, 22, 28, 26, 26, 24, 28, 24, 28, 22, 24, 24, 30, 28, 28, 26, 28, 30, 24,
        30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30,
    ],
];

const NUM_BLOCKS: [[u8; 41]; 4] = [
    [
        0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 4, 4, 4, 4, 4, 6, 6, 6, 6, 7, 8, 8, 9, 9, 10, 12, 12, 12, 13,
        14, 15, 16, 17, 18, 19, 19, 20, 21, 22, 24, 25,
    ],
    [
        0, 1, 1, 1, 2, 2, 4, 4, 4, 5, 5, 5, 8, 9, 9, 10, 10, 11, 13, 14, 16, 17, 17, 18, 20, 21,
        23, 25, 26, 28, 29, 31, 33, 35, 37, 38, 40, 43, 45, 47, 49,
    ],
    [
        0, 1, 1, 2, 2, 4, 4, 6, 6, 8, 8, 8, 10, 12, 16, 12, 17, 16, 18, 21, 20, 23, 23, 25, 27, 29,
        34, 34, 35, 38, 40, 43, 45, 48, 51, 53, 56, 59, 62, 65, 68,
    ],
    [
        0, 1, 1, 2, 4, 4, 4, 5, 6, 8, 8, 11, 11, 16, 16, 18, 16, 19, 21, 25, 25, 25, 34, 30, 32,
        35, 37, 40, 42, 45, 48, 51, 54, 57, 60, 63, 66, 70, 74, 77, 81,
    ],
];

fn ecc_per_block(v: u8, ecc: Ecc) -> usize {
    usize::from(ECC_PER_BLOCK[ecc.index()][usize::from(v.min(40))])
}

fn num_blocks(v: u8, ecc: Ecc) -> usize {
    usize::from(NUM_BLOCKS[ecc.index()][usize::from(v.min(40))]).max(1)
}

/// Modules left for codewords (data + ECC + remainder bits) once every function pattern and
/// the format/version areas are placed.
fn raw_data_modules(v: u8) -> usize {
    let v = usize::from(v);
    let mut n = (16 * v + 128) * v + 64;
    if v >= 2 {
        let align = v / 7 + 2;
        n -= (25 * align - 10) * align - 55;
        if v >= 7 {
            n -= 36;
        }
    }
    n
}

fn total_codewords(v: u8) -> usize {
    raw_data_modules(v) / 8
}

fn data_codeword_count(v: u8, ecc: Ecc) -> usize {
    total_codewords(v) - ecc_per_block(v, ecc) * num_blocks(v, ecc)
}

fn count_bits(v: u8) -> usize {
    if v <= 9 { 8 } else { 16 }
}

/// The largest byte-mode payload of version `v` at level `ecc`.
pub fn byte_capacity(v: u8, ecc: Ecc) -> usize {
    if !(1..=40).contains(&v) {
        return 0;
    }
    let bits = data_codeword_count(v, ecc) * 8;
    (bits.saturating_sub(4 + count_bits(v))) / 8
}

// ---- bit stream ----

struct Bits {
    bytes: Vec<u8>,
    len: usize,
}

impl Bits {
    fn push(&mut self, value: u32, n: usize) {
        for i in (0..n).rev() {
            if self.len % 8 == 0 {
                self.bytes.push(0);
            }
            if (value >> i) & 1 != 0 {
                if let Some(b) = self.bytes.last_mut() {
                    *b |= 0x80 >> (self.len % 8);
                }
            }
            self.len += 1;
        }
    }
}

/// Mode indicator, count, data, terminator, bit padding and pad codewords (7.4).
fn data_codewords(data: &[u8], v: u8, ecc: Ecc) -> Vec<u8> {
    let cap = data_codeword_count(v, ecc);
    let mut b = Bits {
        bytes: Vec::with_capacity(cap),
        len: 0,
    };
    b.push(0b0100, 4);
    b.push(data.len() as u32, count_bits(v));
    for &byte in data {
        b.push(u32::from(byte), 8);
    }
    let cap_bits = cap * 8;
    let term = cap_bits.saturating_sub(b.len).min(4);
    b.push(0, term);
    let pad = (8 - b.len % 8) % 8;
    b.push(0, pad);
    let mut fill = [0xEC, 0x11].into_iter().cycle();
    while b.bytes.len() < cap {
        b.bytes.push(fill.next().unwrap_or(0xEC));
    }
    b.bytes.truncate(cap);
    b.bytes
}

// ---- GF(256) with the QR polynomial x^8 + x^4 + x^3 + x^2 + 1 ----

const fn gf_tables() -> ([u8; 256], [u8; 256]) {
    let mut exp = [0u8; 256];
    let mut log = [0u8; 256];
    let mut x: u16 = 1;
    let mut i = 0;
    while i < 255 {
        exp[i] = x as u8;
        log[x as usize] = i as u8;
        x <<= 1;
        if x & 0x100 != 0 {
            x ^= 0x11D;
        }
        i += 1;
    }
    exp[255] = exp[0];
    (exp, log)
}

const GF: ([u8; 256], [u8; 256]) = gf_tables();

fn gf_mul(a: u8, b: u8) -> u8 {
    if a == 0 || b == 0 {
        return 0;
    }
    let (exp, log) = &GF;
    let s = (usize::from(log[usize::from(a)]) + usize::from(log[usize::from(b)])) % 255;
    exp[s]
}

/// The generator polynomial prod_{i<n} (x - a^i), highest degree first, leading 1 included.
fn rs_generator(n: usize) -> Vec<u8> {
    let mut g = Vec::with_capacity(n + 1);
    g.push(1u8);
    let mut root = 1u8;
    for _ in 0..n {
        g.push(0);
        for j in (1..g.len()).rev() {
            g[j] ^= gf_mul(g[j - 1], root);
        }
        root = gf_mul(root, 2);
    }
    g
}

/// The remainder of data(x) * x^n divided by the generator: the `n` ECC codewords.
fn rs_remainder(data: &[u8], generator: &[u8]) -> Vec<u8> {
    let n = generator.len().saturating_sub(1);
    let mut rem = vec![0u8; n];
    for &d in data {
        let factor = d ^ rem.first().copied().unwrap_or(0);
        rem.rotate_left(1.min(n));
        if let Some(last) = rem.last_mut() {
            *last = 0;
        }
        for (r, &g) in rem.iter_mut().zip(generator.iter().skip(1)) {
            *r ^= gf_mul(g, factor);
        }
    }
    rem
}

/// Splits the data codewords into blocks, appends each block's ECC, and interleaves (7.6).
fn add_ecc_and_interleave(data: &[u8], v: u8, ecc: Ecc) -> Vec<u8> {
    let blocks_n = num_blocks(v, ecc);
    let ecc_len = ecc_per_block(v, ecc);
    let total = total_codewords(v);
    let short_blocks = blocks_n - total % blocks_n;
    let short_data_len = total / blocks_n - ecc_len;
    let generator = rs_generator(ecc_len);
    let mut blocks: Vec<(&[u8], Vec<u8>)> = Vec::with_capacity(blocks_n);
    let mut pos = 0;
    for i in 0..blocks_n {
        let len = short_data_len + usize::from(i >= short_blocks);
        let end = (pos + len).min(data.len());
        let d = data.get(pos..end).unwrap_or(&[]);
        blocks.push((d, rs_remainder(d, &generator)));
        pos = end;
    }
    let mut out = Vec::with_capacity(total);
    for i in 0..=short_data_len {
        for (d, _) in &blocks {
            if let Some(&b) = d.get(i) {
                out.push(b);
            }
        }
    }
    for i in 0..ecc_len {
        for (_, e) in &blocks {
            if let Some(&b) = e.get(i) {
                out.push(b);
            }
        }
    }
    out
}

// ---- the module matrix ----

struct Matrix {
    size: usize,
    version: u8,
    modules: Vec<bool>,
    function: Vec<bool>,
}

impl Matrix {
    fn new(version: u8) -> Matrix {
        let size = usize::from(version) * 4 + 17;
        Matrix {
            size,
            version,
            modules: vec![false; size * size],
            function: vec![false; size * size],
        }
    }

    fn get(&self, x: usize, y: usize) -> bool {
        self.modules
            .get(y * self.size + x)
            .copied()
            .unwrap_or(false)
    }

    fn set_function(&mut self, x: usize, y: usize, dark: bool) {
        if x < self.size && y < self.size {
            let i = y * self.size + x;
            self.modules[i] = dark;
            self.function[i] = true;
        }
    }

    fn alignment_positions(&self) -> Vec<usize> {
        let v = usize::from(self.version);
        if v == 1 {
            return Vec::new();
        }
        let count = v / 7 + 2;
        // Centres are evenly spaced (an even step) from the last one, size - 7, down to the
        // second; the first is always 6. Version 32 is the one irregular case of Annex E.
        let step = if v == 32 {
            26
        } else {
            (v * 4 + count * 2 + 1) / (count * 2 - 2) * 2
        };
        let mut pos: Vec<usize> = (0..count - 1).map(|i| self.size - 7 - i * step).collect();
        pos.push(6);
        pos.reverse();
        pos
    }

    fn draw_function_patterns(&mut self) {
        let size = self.size;
        // Timing patterns (row 6 and column 6); finders overwrite their ends.
        for i in 0..size {
            self.set_function(6, i, i % 2 == 0);
            self.set_function(i, 6, i % 2 == 0);
        }
        // Finder patterns with their separators.
        for (cx, cy) in [(3, 3), (size - 4, 3), (3, size - 4)] {
            for dy in -4i32..=4 {
                for dx in -4i32..=4 {
                    let (x, y) = (cx as i32 + dx, cy as i32 + dy);
                    if x < 0 || y < 0 {
                        continue;
                    }
                    let dist = dx.abs().max(dy.abs());
                    self.set_function(x as usize, y as usize, dist != 2 && dist != 4);
                }
            }
        }
        // Alignment patterns, except where they would overlap a finder.
        let pos = self.alignment_positions();
        let last = pos.len().saturating_sub(1);
        for (i, &cx) in pos.iter().enumerate() {
            for (j, &cy) in pos.iter().enumerate() {
                let corner = (i == 0 || i == last) && (j == 0 || j == last);
                if corner && !(i == last && j == last) {
                    continue;
                }
                for dy in -2i32..=2 {
                    for dx in -2i32..=2 {
                        let dark = dx.abs().max(dy.abs()) != 1;
                        self.set_function(
                            (cx as i32 + dx) as usize,
                            (cy as i32 + dy) as usize,
                            dark,
                        );
                    }
                }
            }
        }
        // Reserve the format areas (real bits drawn once the mask is known) and the dark module.
        self.draw_format_bits(Ecc::Medium, 0);
        // Version information (7.10), versions 7 and up.
        if self.version >= 7 {
            let bits = version_bits(self.version);
            for i in 0..18 {
                let dark = (bits >> i) & 1 != 0;
                let a = size - 11 + i % 3;
                let b = i / 3;
                self.set_function(a, b, dark);
                self.set_function(b, a, dark);
            }
        }
    }

    /// Both copies of the 15-bit format information (7.9) and the dark module.
    fn draw_format_bits(&mut self, ecc: Ecc, mask: u8) {
        let size = self.size;
        let bits = format_bits(ecc, mask);
        let bit = |i: usize| (bits >> i) & 1 != 0;
        // Around the top-left finder.
        for i in 0..=5 {
            self.set_function(8, i, bit(i));
        }
        self.set_function(8, 7, bit(6));
        self.set_function(8, 8, bit(7));
        self.set_function(7, 8, bit(8));
        for i in 9..15 {
            self.set_function(14 - i, 8, bit(i));
        }
        // Split between the top-right and bottom-left finders.
        for i in 0..8 {
            self.set_function(size - 1 - i, 8, bit(i));
        }
        for i in 8..15 {
            self.set_function(8, size - 15 + i, bit(i));
        }
        self.set_function(8, size - 8, true);
    }

    /// Places the codewords in the two-column zigzag from the bottom-right corner (7.7.3),
    /// skipping function modules and the vertical timing column; remainder bits stay light.
    fn draw_codewords(&mut self, codewords: &[u8]) {
        let size = self.size;
        let total_bits = codewords.len() * 8;
        let mut i = 0usize;
        let mut right = size - 1;
        loop {
            if right == 6 {
                right = 5;
            }
            let upward = (right + 1) & 2 == 0;
            for vert in 0..size {
                let y = if upward { size - 1 - vert } else { vert };
                for j in 0..2 {
                    let x = right - j;
                    let idx = y * size + x;
                    if !self.function[idx] && i < total_bits {
                        let byte = codewords.get(i >> 3).copied().unwrap_or(0);
                        self.modules[idx] = (byte >> (7 - (i & 7))) & 1 != 0;
                        i += 1;
                    }
                }
            }
            if right < 2 {
                break;
            }
            right -= 2;
        }
    }

    /// XORs data mask `k` (Table 10) over every non-function module; applying twice undoes it.
    fn apply_mask(&mut self, k: u8) {
        let size = self.size;
        for y in 0..size {
            for x in 0..size {
                let flip = match k {
                    0 => (x + y) % 2 == 0,
                    1 => y % 2 == 0,
                    2 => x % 3 == 0,
                    3 => (x + y) % 3 == 0,
                    4 => (x / 3 + y / 2) % 2 == 0,
                    5 => (x * y) % 2 + (x * y) % 3 == 0,
                    6 => ((x * y) % 2 + (x * y) % 3) % 2 == 0,
                    _ => ((x + y) % 2 + (x * y) % 3) % 2 == 0,
                };
                let idx = y * size + x;
                if flip && !self.function[idx] {
                    self.modules[idx] ^= true;
                }
            }
        }
    }

    /// The penalty of 7.8.3 (Table 11) over the whole symbol:
    /// N1 = 3 (+1 per module past 5) for each run of 5+ same-colour modules in a row or column,
    /// N2 = 3 for each 2x2 block of one colour, N3 = 40 for each 1:1:3:1:1 dark:light:dark:
    /// light:dark pattern preceded or followed by 4 light modules (the quiet zone counts as
    /// light), N4 = 10 for each full 5% the dark proportion deviates from 50%.
    fn penalty(&self) -> u32 {
        let size = self.size;
        let mut score = 0u32;
        let mut line = vec![false; size];
        for horizontal in [true, false] {
            for a in 0..size {
                for (b, m) in line.iter_mut().enumerate() {
                    *m = if horizontal {
                        self.get(b, a)
                    } else {
                        self.get(a, b)
                    };
                }
                score += line_penalty(&line);
            }
        }
        for y in 0..size - 1 {
            for x in 0..size - 1 {
                let c = self.get(x, y);
                if c == self.get(x + 1, y) && c == self.get(x, y + 1) && c == self.get(x + 1, y + 1)
                {
                    score += 3;
                }
            }
        }
        let dark = self.modules.iter().filter(|&&m| m).count();
        let total = size * size;
        let k = (20 * dark).abs_diff(10 * total) / total;
        score + 10 * k as u32
    }
}

/// N1 and N3 of one row or column.
fn line_penalty(line: &[bool]) -> u32 {
    let mut score = 0u32;
    let mut run = 0usize;
    let mut prev = None;
    for &m in line {
        if Some(m) == prev {
            run += 1;
        } else {
            if run >= 5 {
                score += 3 + (run - 5) as u32;
            }
            run = 1;
            prev = Some(m);
        }
    }
    if run >= 5 {
        score += 3 + (run - 5) as u32;
    }
    const PATTERN: [bool; 7] = [true, false, true, true, true, false, true];
    let light = |i: isize| -> bool { i < 0 || i as usize >= line.len() || !line[i as usize] };
    for start in 0..line.len().saturating_sub(6) {
        if line[start..start + 7] != PATTERN {
            continue;
        }
        let s = start as isize;
        let before = (s - 4..s).all(light);
        let after = (s + 7..s + 11).all(light);
        if before || after {
            score += 40;
        }
    }
    score
}

/// BCH(15,5) format information (7.9.1): 2 ECC-level bits, 3 mask bits, 10 check bits,
/// XORed with 101010000010010.
fn format_bits(ecc: Ecc, mask: u8) -> u32 {
    let data = (ecc.format_bits() << 3) | u32::from(mask & 7);
    let mut rem = data << 10;
    for i in (10..15).rev() {
        if (rem >> i) & 1 != 0 {
            rem ^= 0x537 << (i - 10);
        }
    }
    ((data << 10) | rem) ^ 0x5412
}

/// BCH(18,6) version information (7.10).
fn version_bits(v: u8) -> u32 {
    let data = u32::from(v);
    let mut rem = data << 12;
    for i in (12..18).rev() {
        if (rem >> i) & 1 != 0 {
            rem ^= 0x1F25 << (i - 12);
        }
    }
    (data << 12) | rem
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::XorShift64;

    #[test]
    fn format_and_version_bch_known_values() {
        // Annex C example: M, mask 5 -> 100000011001110.
        assert_eq!(format_bits(Ecc::Medium, 5), 0b100000011001110);
        // Annex D example: version 7 -> 000111110010010100.
        assert_eq!(version_bits(7), 0b000111110010010100);
        assert_eq!(version_bits(40), 0b101000110001101001);
    }

    #[test]
    fn capacities_match_table_7() {
        // Byte-mode capacities from the standard's Table 7.
        assert_eq!(byte_capacity(1, Ecc::Low), 17);
        assert_eq!(byte_capacity(1, Ecc::Medium), 14);
        assert_eq!(byte_capacity(1, Ecc::Quartile), 11);
        assert_eq!(byte_capacity(1, Ecc::High), 7);
        assert_eq!(byte_capacity(10, Ecc::Medium), 213);
        assert_eq!(byte_capacity(15, Ecc::Medium), 412);
        assert_eq!(byte_capacity(40, Ecc::Low), 2953);
        assert_eq!(byte_capacity(40, Ecc::Medium), 2331);
        assert_eq!(byte_capacity(40, Ecc::Quartile), 1663);
        assert_eq!(byte_capacity(40, Ecc::High), 1273);
        assert_eq!(byte_capacity(0, Ecc::Low), 0);
        assert_eq!(byte_capacity(41, Ecc::Low), 0);
        // Data codewords total (Table 9) for a few versions.
        assert_eq!(total_codewords(1), 26);
        assert_eq!(total_codewords(7), 196);
        assert_eq!(total_codewords(40), 3706);
        assert_eq!(data_codeword_count(5, Ecc::Quartile), 62);
    }

    #[test]
    fn reed_solomon_matches_annex_i_example() {
        // Annex I: "01234567" at 1-M; data codewords and their 10 ECC codewords.
        let data = [
            16, 32, 12, 86, 97, 128, 236, 17, 236, 17, 236, 17, 236, 17, 236, 17,
        ];
        let ecc = rs_remainder(&data, &rs_generator(10));
        assert_eq!(ecc, [165, 36, 212, 193, 237, 54, 199, 135, 44, 85]);
    }

    #[test]
    fn byte_mode_bitstream() {
        // "AB" at 1-M: 0100 00000010 01000001 01000010 0000 then pads.
        let cw = data_codewords(b"AB", 1, Ecc::Medium);
        assert_eq!(cw.len(), 16);
        assert_eq!(&cw[..4], &[0x40, 0x24, 0x14, 0x20]);
        assert_eq!(&cw[4..8], &[0xEC, 0x11, 0xEC, 0x11]);
    }

    #[test]
    fn alignment_positions_known() {
        let pos = |v| Matrix::new(v).alignment_positions();
        assert_eq!(pos(1), Vec::<usize>::new());
        assert_eq!(pos(2), vec![6, 18]);
        assert_eq!(pos(7), vec![6, 22, 38]);
        assert_eq!(pos(15), vec![6, 26, 48, 70]);
        assert_eq!(pos(32), vec![6, 34, 60, 86, 112, 138]);
        assert_eq!(pos(36), vec![6, 24, 50, 76, 102, 128, 154]);
        assert_eq!(pos(40), vec![6, 30, 58, 86, 114, 142, 170]);
    }

    #[test]
    fn raw_modules_fill_exactly() {
        // Every non-function module is a codeword bit or one of the 0/3/4/7 remainder bits.
        for v in 1..=40u8 {
            let mut m = Matrix::new(v);
            m.draw_function_patterns();
            let free = m.function.iter().filter(|&&f| !f).count();
            assert_eq!(free, raw_data_modules(v), "version {v}");
            assert!([0, 3, 4, 7].contains(&(free - total_codewords(v) * 8)));
        }
    }

    #[test]
    fn picks_smallest_version_and_rejects_too_long() {
        assert_eq!(encode(b"", Ecc::Medium).unwrap().version, 1);
        assert_eq!(encode(&[b'a'; 14], Ecc::Medium).unwrap().version, 1);
        assert_eq!(encode(&[b'a'; 15], Ecc::Medium).unwrap().version, 2);
        let link = format!(
            "tg://proxy?server=203.0.113.77&port=443&secret=ee{}{}",
            "0123456789abcdef".repeat(2),
            "7777772e676f6f676c652e636f6d".repeat(4)
        );
        let c = encode(link.as_bytes(), Ecc::Medium).unwrap();
        assert!(c.version <= 15, "{}", c.version);
        assert_eq!(c.size, usize::from(c.version) * 4 + 17);
        let big = vec![0u8; 2332];
        assert_eq!(
            encode(&big, Ecc::Medium),
            Err(QrError::DataTooLong {
                len: 2332,
                max: 2331
            })
        );
        assert!(encode(&big[..2331], Ecc::Medium).is_ok());
        assert_eq!(
            encode_with(b"x", Ecc::Low, Some(0), None),
            Err(QrError::InvalidVersion(0))
        );
        assert_eq!(
            encode_with(b"x", Ecc::Low, Some(41), None),
            Err(QrError::InvalidVersion(41))
        );
        assert_eq!(
            encode_with(b"x", Ecc::Low, None, Some(8)),
            Err(QrError::InvalidMask(8))
        );
        assert!(matches!(
            encode_with(&[0; 20], Ecc::Low, Some(1), None),
            Err(QrError::DataTooLong { len: 20, max: 17 })
        ));
    }

    #[test]
    fn finder_timing_and_dark_module_present() {
        let c = encode(b"hello", Ecc::Medium).unwrap();
        let n = c.size;
        for (ox, oy) in [(0, 0), (n - 7, 0), (0, n - 7)] {
            for d in 0..7 {
                assert!(c.module(ox + d, oy) && c.module(ox, oy + d));
                assert!(c.module(ox + 6, oy + d) && c.module(ox + d, oy + 6));
            }
            assert!(c.module(ox + 3, oy + 3) && !c.module(ox + 1, oy + 1));
        }
        for i in 8..n - 8 {
            assert_eq!(c.module(i, 6), i % 2 == 0);
            assert_eq!(c.module(6, i), i % 2 == 0);
        }
        assert!(c.module(8, n - 8));
        assert!(!c.module(n, 0) && !c.module(0, n) && !c.module(usize::MAX, usize::MAX));
    }

    /// Reads the format information back from both copies and checks it names the level and mask.
    #[test]
    fn format_information_round_trips() {
        for ecc in [Ecc::Low, Ecc::Medium, Ecc::Quartile, Ecc::High] {
            for mask in 0..8 {
                let c = encode_with(b"mtpx", ecc, None, Some(mask)).unwrap();
                let n = c.size;
                let mut a = 0u32;
                let mut b = 0u32;
                let coords_a: Vec<(usize, usize)> = (0..=5)
                    .map(|i| (8, i))
                    .chain([(8, 7), (8, 8), (7, 8)])
                    .chain((9..15).map(|i| (14 - i, 8)))
                    .collect();
                let coords_b: Vec<(usize, usize)> = (0..8)
                    .map(|i| (n - 1 - i, 8))
                    .chain((8..15).map(|i| (8, n - 15 + i)))
                    .collect();
                for (i, &(x, y)) in coords_a.iter().enumerate() {
                    a |= u32::from(c.module(x, y)) << i;
                }
                for (i, &(x, y)) in coords_b.iter().enumerate() {
                    b |= u32::from(c.module(x, y)) << i;
                }
                assert_eq!(a, format_bits(ecc, mask));
                assert_eq!(b, a);
                let decoded = a ^ 0x5412;
                assert_eq!(decoded >> 10, (ecc.format_bits() << 3) | u32::from(mask));
            }
        }
    }

    #[test]
    fn penalty_rules_on_lines() {
        // A 5-run scores 3, a 7-run 5.
        assert_eq!(
            line_penalty(&[
                true, false, true, true, true, true, true, false, true, false, true
            ]),
            3
        );
        let mut l = vec![false; 7];
        l.extend([true, false]);
        assert_eq!(line_penalty(&l), 5);
        // Finder-like pattern with 4 light modules after.
        let p: Vec<bool> = "1011101000010".bytes().map(|b| b == b'1').collect();
        assert_eq!(line_penalty(&p), 40);
        // Without light on either side: no N3.
        let q: Vec<bool> = "10110111010110".bytes().map(|b| b == b'1').collect();
        assert_eq!(line_penalty(&q), 0);
        // At the symbol edge the quiet zone counts as light.
        let r: Vec<bool> = "1011101101".bytes().map(|b| b == b'1').collect();
        assert_eq!(line_penalty(&r), 40);
    }

    #[test]
    #[allow(clippy::needless_range_loop)]
    fn render_terminal_shape_and_glyphs() {
        let c = encode(b"hi", Ecc::Medium).unwrap();
        assert_eq!(c.size, 21);
        let t = render_terminal(&c, false);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), (21usize + 8).div_ceil(2));
        assert!(t.ends_with('\n'));
        for l in &lines {
            assert_eq!(l.chars().count(), 29);
            assert!(l.chars().all(|ch| " ▀▄█".contains(ch)));
        }
        // Quiet zone: first two lines blank; finder top row at pixel row 4 = line 2 top half.
        assert!(lines[0].chars().all(|ch| ch == ' '));
        assert!(lines[1].chars().all(|ch| ch == ' '));
        let l2: Vec<char> = lines[2].chars().collect();
        assert_eq!(&l2[..4], &[' '; 4]);
        assert_eq!(l2[4], '█'); // rows 4 and 5, column 4: finder border
        assert_eq!(l2[5], '▀'); // row 4 dark, row 5 light (finder inner ring)
        // Decode the half blocks back into modules: they must equal the matrix.
        for inv in [false, true] {
            let t = render_terminal(&c, inv);
            let grid: Vec<Vec<char>> = t.lines().map(|l| l.chars().collect()).collect();
            for y in 0..c.size + 8 {
                for x in 0..c.size + 8 {
                    let ch = grid[y / 2][x];
                    let drawn = matches!((ch, y % 2), ('█', _) | ('▀', 0) | ('▄', 1));
                    let dark = x >= 4 && y >= 4 && c.module(x - 4, y - 4);
                    assert_eq!(drawn, dark != inv, "({x},{y}) inv={inv}");
                }
            }
            // The odd last half line is never drawn.
            assert!(
                grid.last()
                    .unwrap()
                    .iter()
                    .all(|&ch| ch == ' ' || ch == '▀')
            );
        }
    }

    #[test]
    fn pbm_header_and_size() {
        let c = encode(b"x", Ecc::Low).unwrap();
        let p = to_pbm(&c, 2, 4);
        let s = String::from_utf8(p).unwrap();
        assert!(s.starts_with("P1\n58 58\n"));
        assert_eq!(s.lines().count(), 2 + 58);
    }

    #[test]
    fn garbage_sweep_never_panics_and_is_deterministic() {
        let mut rng = XorShift64(0x517E_C0DE);
        for i in 0..120 {
            let len = (rng.next_u64() % 420) as usize;
            let data: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            let ecc = [Ecc::Low, Ecc::Medium, Ecc::Quartile, Ecc::High][i % 4];
            let a = encode(&data, ecc).unwrap();
            assert!(data.len() <= byte_capacity(a.version, ecc));
            if a.version > 1 {
                assert!(data.len() > byte_capacity(a.version - 1, ecc));
            }
            assert_eq!(a, encode(&data, ecc).unwrap());
            // The chosen mask has the lowest penalty of all eight.
            if i % 20 == 0 {
                let best = (0..8)
                    .map(|m| {
                        penalty_of(&encode_with(&data, ecc, Some(a.version), Some(m)).unwrap())
                    })
                    .min()
                    .unwrap();
                assert_eq!(penalty_of(&a), best);
            }
        }
        // Every length from 0 to the largest, at one level (truncation sweep of the input).
        let data: Vec<u8> = (0..2953u32).map(|i| (i * 7) as u8).collect();
        for len in (0..=data.len()).step_by(331) {
            let c = encode(&data[..len], Ecc::Low).unwrap();
            assert!(c.version <= 40);
        }
        assert!(encode(&data, Ecc::Low).is_ok());
    }

    fn penalty_of(c: &QrCode) -> u32 {
        let mut m = Matrix::new(c.version);
        m.modules = c.modules.clone();
        m.penalty()
    }

    fn sha256_hex(s: &str) -> String {
        use sha2::{Digest, Sha256};
        crate::formats::encoding::hex_encode(&Sha256::digest(s.as_bytes()))
    }

    fn parse_ecc(s: &str) -> Ecc {
        match s {
            "L" => Ecc::Low,
            "M" => Ecc::Medium,
            "Q" => Ecc::Quartile,
            _ => Ecc::High,
        }
    }

    /// Full matrices made once by an independent encoder (PyPI `qrcode`, `tests/data/qr/gen.py`).
    #[test]
    fn known_answer_full_matrices() {
        let cases = include_str!("../../tests/data/qr/matrices.txt");
        let mut n = 0;
        for block in cases.split("\n\n").filter(|b| !b.trim().is_empty()) {
            let mut lines = block.lines();
            let head = lines.next().unwrap();
            let f: Vec<&str> = head.split('\t').collect();
            // data_hex ecc version mask(auto|n)
            let data = crate::formats::encoding::hex_decode(f[0]).unwrap();
            let ecc = parse_ecc(f[1]);
            let version: u8 = f[2].parse().unwrap();
            let mask = if f[3] == "auto" {
                None
            } else {
                Some(f[3].parse().unwrap())
            };
            let c = encode_with(
                &data,
                ecc,
                if mask.is_none() { None } else { Some(version) },
                mask,
            )
            .unwrap();
            let want: String = lines.map(|l| format!("{l}\n")).collect();
            assert_eq!(c.version, version, "{head}");
            assert_eq!(to_text(&c), want, "{head}");
            n += 1;
        }
        assert!(n >= 4);
    }

    /// Digests of the full matrices of every version 1-40 at every level, twice (PyPI `qrcode`).
    #[test]
    fn known_answer_every_version_digest() {
        let cases = include_str!("../../tests/data/qr/digests.txt");
        let mut n = 0;
        for line in cases
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let f: Vec<&str> = line.split('\t').collect();
            let len: usize = f[0].parse().unwrap();
            let seed: usize = f[1].parse().unwrap();
            let data: Vec<u8> = (0..len)
                .map(|i| ((i * 31 + seed * 7 + 11) & 0xFF) as u8)
                .collect();
            let ecc = parse_ecc(f[2]);
            let version: u8 = f[3].parse().unwrap();
            let mask = if f[4] == "auto" {
                None
            } else {
                Some(f[4].parse().unwrap())
            };
            let c = encode_with(
                &data,
                ecc,
                if mask.is_none() { None } else { Some(version) },
                mask,
            )
            .unwrap();
            assert_eq!(c.version, version, "{line}");
            assert_eq!(sha256_hex(&to_text(&c)), f[5], "{line}");
            n += 1;
        }
        assert!(n >= 160);
    }

    /// Cross-check with a real decoder: writes PBM images and reads them back with `zbarimg`
    /// (zbar-tools). Run by `tests/qr_decode.sh`, which needs zbarimg; fails without it.
    #[test]
    #[ignore = "needs zbarimg (zbar-tools): run tests/qr_decode.sh"]
    fn zbarimg_decodes_our_codes() {
        use std::process::Command;
        assert!(
            Command::new("zbarimg").arg("--version").output().is_ok(),
            "zbarimg not found; install it as root: apt-get install -y zbar-tools"
        );
        let dir = std::env::temp_dir().join(format!("mtpx-qr-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut texts: Vec<String> = vec![
            "hello".into(),
            "tg://proxy?port=443&secret=ee0123456789abcdef0123456789abcdef7777772e676f6f676c652e636f6d&server=203.0.113.7".into(),
            "https://t.me/proxy?port=8443&secret=7gEjRWeJq83vASNFZ4mrze93d3cuZ29vZ2xlLmNvbQ&server=2001:db8::1".into(),
        ];
        let mut rng = XorShift64(7);
        for len in [1usize, 13, 14, 15, 60, 120, 180, 250, 400, 700, 1200] {
            texts.push(
                (0..len)
                    .map(|_| (b'a' + (rng.next_u64() % 26) as u8) as char)
                    .collect(),
            );
        }
        for (i, t) in texts.iter().enumerate() {
            for ecc in [Ecc::Low, Ecc::Medium, Ecc::Quartile, Ecc::High] {
                let c = encode(t.as_bytes(), ecc).unwrap();
                let path = dir.join(format!("{i}-{ecc:?}.pbm"));
                std::fs::write(&path, to_pbm(&c, 4, 4)).unwrap();
                let out = Command::new("zbarimg")
                    .args(["--raw", "-q"])
                    .arg(&path)
                    .output()
                    .unwrap();
                let got = String::from_utf8_lossy(&out.stdout);
                assert_eq!(
                    got.trim_end_matches('\n'),
                    t,
                    "v{} {:?} mask {}",
                    c.version,
                    ecc,
                    c.mask
                );
            }
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}
