//! Exact polygon outlines of binary masks.
//!
//! Boundaries are traced along pixel edges ("crack following"), so the polygons pass through
//! pixel corners and enclose exactly the foreground pixels: filling them back over pixel
//! centres (even-odd or non-zero rule) reproduces the mask bit for bit.
//!
//! Foreground is 8-connected and background 4-connected, the usual pairing that makes every
//! component's boundary a closed curve: two foreground pixels touching only at a corner belong
//! to the same polygon (its outline touches itself at that corner), while background pixels
//! touching only at a corner are separate regions.

use serde::{Deserialize, Serialize};

use super::BinaryMask;

/// One 8-connected foreground component: its outer boundary and the boundaries of the
/// background regions it encloses.
///
/// Points are pixel-corner coordinates `[x, y]` in image pixels (x right, y down), so the
/// single pixel at column 3, row 4 is the square `(3,4) (4,4) (4,5) (3,5)`. Rings are closed
/// implicitly (the first point is not repeated) and contain only corners, never collinear
/// points. Each ring starts at its top-most, then left-most point.
///
/// Orientation: walking an `exterior` ring, the foreground is on the right. In image
/// coordinates (y down) that is clockwise as displayed on screen and a positive shoelace area
/// `sum(x[i] * y[i+1] - x[i+1] * y[i]) / 2`. Holes run the other way (counter-clockwise on
/// screen, negative shoelace area), again with the foreground on their right. Note that this
/// is the opposite of GeoJSON's convention once y is flipped to point up.
///
/// A hole can contain further foreground; that foreground is a separate [`Polygon`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Polygon {
    /// Outer boundary as `[x, y]` pixel-corner points, foreground on the right.
    pub exterior: Vec<[f32; 2]>,
    /// Boundaries of enclosed background regions, oriented opposite to `exterior`.
    pub holes: Vec<Vec<[f32; 2]>>,
}

/// Directions in the order of clockwise rotation on screen, so a right turn is `+1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    East = 0,
    South = 1,
    West = 2,
    North = 3,
}

impl Dir {
    fn right(self) -> Dir {
        Dir::from_index(self as u8 + 1)
    }

    fn left(self) -> Dir {
        Dir::from_index(self as u8 + 3)
    }

    fn from_index(i: u8) -> Dir {
        match i % 4 {
            0 => Dir::East,
            1 => Dir::South,
            2 => Dir::West,
            _ => Dir::North,
        }
    }
}

/// A traced ring plus what is needed to attach holes to their component.
struct Ring {
    points: Vec<[f32; 2]>,
    /// Some foreground pixel on the ring's right-hand side.
    pixel: (u32, u32),
}

/// Traces the outline of every 8-connected foreground component of `mask`, with the holes
/// (4-connected background regions) it encloses.
///
/// Polygons come in raster order of each component's top-left pixel, holes in raster order of
/// their own top-left corner. An empty mask gives no polygons.
pub fn mask_to_polygons(mask: &BinaryMask) -> Vec<Polygon> {
    let (w, h) = (mask.width, mask.height);
    if w == 0 || h == 0 {
        return Vec::new();
    }
    let fg = |x: i64, y: i64| -> bool {
        x >= 0 && y >= 0 && x < w as i64 && y < h as i64 && mask.get(x as u32, y as u32)
    };

    // Every ring crosses some horizontal pixel edge, so remembering which horizontal edges
    // have been walked is enough to trace each ring exactly once.
    let mut visited = BitSet::new((h as usize + 1) * w as usize);
    let mut outers: Vec<Ring> = Vec::new();
    let mut holes: Vec<Ring> = Vec::new();
    let row_len = w as usize;
    let blank = vec![0u8; row_len];
    for y in 0..=h as usize {
        let above = if y > 0 {
            &mask.data[(y - 1) * row_len..y * row_len]
        } else {
            &blank
        };
        let below = if y < h as usize {
            &mask.data[y * row_len..(y + 1) * row_len]
        } else {
            &blank
        };
        let mut x = 0;
        while x < row_len {
            // Most of a mask is uniform; identical bytes above and below cannot form an edge.
            if x + 8 <= row_len && above[x..x + 8] == below[x..x + 8] {
                x += 8;
                continue;
            }
            let chunk_end = (x + 8).min(row_len);
            for x in x..chunk_end {
                let (a, b) = (above[x] != 0, below[x] != 0);
                if a == b || visited.get(y * row_len + x) {
                    continue;
                }
                // The first edge of a ring met in raster order is on its top line: foreground
                // below means the top of a component (an exterior ring, walked east),
                // foreground above means the top of a hole (walked west).
                let (xi, yi) = (x as i64, y as i64);
                if b {
                    let points = trace(&fg, &mut visited, row_len, (xi, yi), Dir::East);
                    outers.push(Ring {
                        points,
                        pixel: (x as u32, y as u32),
                    });
                } else {
                    let points = trace(&fg, &mut visited, row_len, (xi + 1, yi), Dir::West);
                    holes.push(Ring {
                        points,
                        pixel: (x as u32, y as u32 - 1),
                    });
                }
            }
            x = chunk_end;
        }
    }

    let outer_pixels: Vec<(u32, u32)> = outers.iter().map(|r| r.pixel).collect();
    let mut polygons: Vec<Polygon> = outers
        .into_iter()
        .map(|r| Polygon {
            exterior: r.points,
            holes: Vec::new(),
        })
        .collect();
    if holes.is_empty() {
        return polygons;
    }
    if polygons.len() == 1 {
        polygons[0].holes = holes.into_iter().map(|r| r.points).collect();
        return polygons;
    }
    let mut components = Components::new(mask);
    let mut owner_of_root = vec![u32::MAX; components.run_count()];
    for (i, &pixel) in outer_pixels.iter().enumerate() {
        if let Some(root) = components.root_at(pixel) {
            owner_of_root[root as usize] = i as u32;
        }
    }
    for hole in holes {
        let owner = components
            .root_at(hole.pixel)
            .map(|root| owner_of_root[root as usize]);
        debug_assert!(
            owner.is_some_and(|o| o != u32::MAX),
            "hole border pixel not in any component"
        );
        if let Some(polygon) = owner.and_then(|o| polygons.get_mut(o as usize)) {
            polygon.holes.push(hole.points);
        }
    }
    polygons
}

/// Follows one ring from the edge leaving `start` in direction `dir` until it closes,
/// returning its corners starting from the top-most, left-most one.
fn trace(
    fg: &impl Fn(i64, i64) -> bool,
    visited: &mut BitSet,
    row_len: usize,
    start: (i64, i64),
    start_dir: Dir,
) -> Vec<[f32; 2]> {
    let mut points = Vec::new();
    let (mut x, mut y) = start;
    let mut dir = start_dir;
    loop {
        match dir {
            Dir::East => {
                visited.set(y as usize * row_len + x as usize);
                x += 1;
            }
            Dir::West => {
                x -= 1;
                visited.set(y as usize * row_len + x as usize);
            }
            Dir::South => y += 1,
            Dir::North => y -= 1,
        }
        // The two pixels ahead of vertex (x, y), on the left and right of `dir`.
        let (left, right) = match dir {
            Dir::East => ((x, y - 1), (x, y)),
            Dir::South => ((x, y), (x - 1, y)),
            Dir::West => ((x - 1, y), (x - 1, y - 1)),
            Dir::North => ((x - 1, y - 1), (x, y - 1)),
        };
        // Foreground stays on the right. When the pixel ahead-left is foreground the outline
        // turns left around it; at a diagonal-only contact (ahead-right background) this is
        // what joins the two foreground pixels into one ring, giving 8-connectivity.
        let next = if fg(left.0, left.1) {
            dir.left()
        } else if fg(right.0, right.1) {
            dir
        } else {
            dir.right()
        };
        if next != dir {
            points.push([x as f32, y as f32]);
        }
        dir = next;
        if (x, y) == start && dir == start_dir {
            break;
        }
    }
    // Rotate so the ring starts at its top-most, left-most corner.
    if let Some(first) = points
        .iter()
        .enumerate()
        .min_by(|(_, a), (_, b)| (a[1], a[0]).partial_cmp(&(b[1], b[0])).expect("finite"))
        .map(|(i, _)| i)
    {
        points.rotate_left(first);
    }
    points
}

/// 8-connected components of the foreground, computed over horizontal runs of pixels rather
/// than single pixels (far fewer nodes, and no per-pixel label image).
struct Components {
    /// Index of the first run of each row, plus a final end marker.
    row_first: Vec<usize>,
    /// Run `i` covers columns `starts[i]..ends[i]` of its row.
    starts: Vec<u32>,
    ends: Vec<u32>,
    /// Union-find forest over runs.
    parent: Vec<u32>,
}

impl Components {
    fn new(mask: &BinaryMask) -> Self {
        let w = mask.width as usize;
        let mut this = Components {
            row_first: Vec::with_capacity(mask.height as usize + 1),
            starts: Vec::new(),
            ends: Vec::new(),
            parent: Vec::new(),
        };
        for (y, row) in mask.data.chunks_exact(w).enumerate() {
            this.row_first.push(this.starts.len());
            let mut x = 0;
            while x < w {
                if row[x] == 0 {
                    x += 1;
                    continue;
                }
                let start = x;
                while x < w && row[x] != 0 {
                    x += 1;
                }
                let id = this.starts.len() as u32;
                this.starts.push(start as u32);
                this.ends.push(x as u32);
                this.parent.push(id);
            }
            if y > 0 {
                this.join_rows(this.row_first[y - 1], this.row_first[y], this.starts.len());
            }
        }
        this.row_first.push(this.starts.len());
        this
    }

    /// Unions every run of the previous row (`prev..cur`) with the runs of the current row
    /// (`cur..end`) it touches, diagonals included.
    fn join_rows(&mut self, prev: usize, cur: usize, end: usize) {
        let (mut i, mut j) = (prev, cur);
        while i < cur && j < end {
            // Widening the upper run by one pixel on each side makes diagonal contact overlap.
            let (s1, e1) = (self.starts[i] as i64 - 1, self.ends[i] as i64 + 1);
            let (s2, e2) = (self.starts[j] as i64, self.ends[j] as i64);
            if s1 < e2 && s2 < e1 {
                self.union(i as u32, j as u32);
            }
            // Whichever interval ends first cannot touch anything further along the other row.
            if e1 <= e2 {
                i += 1;
            } else {
                j += 1;
            }
        }
    }

    fn find(&mut self, mut i: u32) -> u32 {
        while self.parent[i as usize] != i {
            let grandparent = self.parent[self.parent[i as usize] as usize];
            self.parent[i as usize] = grandparent;
            i = grandparent;
        }
        i
    }

    fn union(&mut self, a: u32, b: u32) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra != rb {
            // Keep the older run as root so roots stay stable and trees shallow in practice.
            let (lo, hi) = (ra.min(rb), ra.max(rb));
            self.parent[hi as usize] = lo;
        }
    }

    fn run_count(&self) -> usize {
        self.starts.len()
    }

    /// Root run of the component containing foreground pixel `(x, y)`.
    fn root_at(&mut self, (x, y): (u32, u32)) -> Option<u32> {
        let (first, last) = (self.row_first[y as usize], self.row_first[y as usize + 1]);
        let offset = self.starts[first..last].partition_point(|&s| s <= x);
        let run = first + offset.checked_sub(1)?;
        (x < self.ends[run]).then(|| self.find(run as u32))
    }
}

/// A fixed-size bit vector.
struct BitSet {
    words: Vec<u64>,
}

impl BitSet {
    fn new(len: usize) -> Self {
        Self {
            words: vec![0; len.div_ceil(64)],
        }
    }

    #[inline]
    fn get(&self, i: usize) -> bool {
        self.words[i / 64] >> (i % 64) & 1 != 0
    }

    #[inline]
    fn set(&mut self, i: usize) {
        self.words[i / 64] |= 1 << (i % 64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::masks::test_masks::{mask, random_mask};

    /// Even-odd fill of `rings` sampled at pixel centres.
    fn rasterize<'a>(
        w: u32,
        h: u32,
        rings: impl IntoIterator<Item = &'a Vec<[f32; 2]>>,
    ) -> Vec<u8> {
        let (w, h) = (w as usize, h as usize);
        // A ray from a pixel centre towards +x crosses a vertical edge at column `ex` iff
        // `ex > x`; collect crossings per row, then take suffix parities.
        let mut toggles = vec![0u8; (w + 1) * h];
        for ring in rings {
            for (i, a) in ring.iter().enumerate() {
                let b = ring[(i + 1) % ring.len()];
                if a[0] == b[0] {
                    let (y0, y1) = (a[1].min(b[1]) as usize, a[1].max(b[1]) as usize);
                    for y in y0..y1 {
                        toggles[y * (w + 1) + a[0] as usize] ^= 1;
                    }
                }
            }
        }
        let mut out = vec![0u8; w * h];
        for y in 0..h {
            let mut parity = 0;
            for x in (0..w).rev() {
                parity ^= toggles[y * (w + 1) + x + 1];
                out[y * w + x] = parity;
            }
        }
        out
    }

    fn shoelace(ring: &[[f32; 2]]) -> f64 {
        let mut s = 0.0;
        for (i, a) in ring.iter().enumerate() {
            let b = ring[(i + 1) % ring.len()];
            s += a[0] as f64 * b[1] as f64 - b[0] as f64 * a[1] as f64;
        }
        s / 2.0
    }

    /// 8-connected components by flood fill, independent of the code under test.
    fn components(m: &BinaryMask) -> Vec<Vec<u8>> {
        let (w, h) = (m.width as i64, m.height as i64);
        let mut seen = vec![false; m.data.len()];
        let mut out = Vec::new();
        for start in 0..m.data.len() {
            if m.data[start] == 0 || seen[start] {
                continue;
            }
            let mut comp = vec![0u8; m.data.len()];
            let mut stack = vec![start];
            seen[start] = true;
            while let Some(i) = stack.pop() {
                comp[i] = 1;
                let (x, y) = (i as i64 % w, i as i64 / w);
                for dy in -1..=1 {
                    for dx in -1..=1 {
                        let (nx, ny) = (x + dx, y + dy);
                        if nx >= 0 && ny >= 0 && nx < w && ny < h {
                            let j = (ny * w + nx) as usize;
                            if m.data[j] != 0 && !seen[j] {
                                seen[j] = true;
                                stack.push(j);
                            }
                        }
                    }
                }
            }
            out.push(comp);
        }
        out
    }

    /// Checks everything the module promises about `m`'s polygons.
    fn check(m: &BinaryMask) {
        let polygons = mask_to_polygons(m);
        let all_rings = polygons
            .iter()
            .flat_map(|p| std::iter::once(&p.exterior).chain(&p.holes));
        assert_eq!(rasterize(m.width, m.height, all_rings), m.data, "{m:?}");

        let comps = components(m);
        assert_eq!(polygons.len(), comps.len(), "component count");
        for (polygon, comp) in polygons.iter().zip(&comps) {
            let rings = std::iter::once(&polygon.exterior).chain(&polygon.holes);
            assert_eq!(&rasterize(m.width, m.height, rings), comp, "{polygon:?}");
            assert!(shoelace(&polygon.exterior) > 0.0);
            for hole in &polygon.holes {
                assert!(shoelace(hole) < 0.0);
            }
            for ring in std::iter::once(&polygon.exterior).chain(&polygon.holes) {
                assert!(ring.len() >= 4 && ring.len() % 2 == 0);
                for i in 0..ring.len() {
                    let (a, b, c) = (
                        ring[i],
                        ring[(i + 1) % ring.len()],
                        ring[(i + 2) % ring.len()],
                    );
                    // Axis-aligned, non-degenerate, and turning at every point.
                    assert!((a[0] == b[0]) != (a[1] == b[1]), "{ring:?}");
                    assert!((a[0] == b[0]) != (b[0] == c[0]), "collinear in {ring:?}");
                }
                let top_left = ring
                    .iter()
                    .min_by(|a, b| (a[1], a[0]).partial_cmp(&(b[1], b[0])).unwrap())
                    .unwrap();
                assert_eq!(&ring[0], top_left);
            }
        }
    }

    #[test]
    fn single_pixel() {
        let mut m = BinaryMask::new(6, 7);
        m.set(3, 4, true);
        let polygons = mask_to_polygons(&m);
        assert_eq!(
            polygons,
            vec![Polygon {
                exterior: vec![[3.0, 4.0], [4.0, 4.0], [4.0, 5.0], [3.0, 5.0]],
                holes: vec![],
            }]
        );
        check(&m);
    }

    #[test]
    fn empty_and_full() {
        assert!(mask_to_polygons(&BinaryMask::new(5, 5)).is_empty());
        assert!(mask_to_polygons(&BinaryMask::new(0, 3)).is_empty());
        let full = mask(&["111", "111"]);
        assert_eq!(
            mask_to_polygons(&full)[0].exterior,
            vec![[0.0, 0.0], [3.0, 0.0], [3.0, 2.0], [0.0, 2.0]]
        );
        check(&full);
    }

    #[test]
    fn ring_with_hole() {
        let m = mask(&["111", "101", "111"]);
        let polygons = mask_to_polygons(&m);
        assert_eq!(polygons.len(), 1);
        assert_eq!(
            polygons[0].holes,
            vec![vec![[1.0, 1.0], [1.0, 2.0], [2.0, 2.0], [2.0, 1.0]]]
        );
        check(&m);
    }

    #[test]
    fn diagonal_touch_is_one_component() {
        let m = mask(&["10", "01"]);
        let polygons = mask_to_polygons(&m);
        assert_eq!(polygons.len(), 1);
        assert_eq!(
            polygons[0].exterior,
            vec![
                [0.0, 0.0],
                [1.0, 0.0],
                [1.0, 1.0],
                [2.0, 1.0],
                [2.0, 2.0],
                [1.0, 2.0],
                [1.0, 1.0],
                [0.0, 1.0]
            ]
        );
        check(&m);
        check(&mask(&["01", "10"]));
    }

    #[test]
    fn diagonal_background_holes_stay_separate() {
        // Two background pixels touching at a corner inside a ring are two holes.
        let m = mask(&["1111", "1011", "1101", "1111"]);
        let polygons = mask_to_polygons(&m);
        assert_eq!(polygons.len(), 1);
        assert_eq!(polygons[0].holes.len(), 2);
        check(&m);
    }

    #[test]
    fn nested_shapes() {
        let m = mask(&[
            "111111111",
            "100000001",
            "101111101",
            "101000101",
            "101010101",
            "101000101",
            "101111101",
            "100000001",
            "111111111",
        ]);
        let polygons = mask_to_polygons(&m);
        assert_eq!(polygons.len(), 3);
        assert_eq!(polygons[0].holes.len(), 1);
        assert_eq!(polygons[1].holes.len(), 1);
        assert_eq!(polygons[2].holes.len(), 0);
        check(&m);
    }

    #[test]
    fn touching_image_border() {
        check(&mask(&["110", "100", "110"]));
        check(&mask(&["111", "000", "111"]));
        check(&mask(&["1"]));
        check(&mask(&["101"]));
    }

    #[test]
    fn random_masks_rasterize_back() {
        for seed in 0..300u64 {
            let w = (seed % 23) as u32 + 1;
            let h = (seed * 5 % 19) as u32 + 1;
            check(&random_mask(seed, w, h, 20 + seed % 60));
        }
        for seed in 0..20u64 {
            check(&random_mask(
                seed,
                70 - seed as u32,
                41 + seed as u32,
                30 + seed * 2,
            ));
        }
    }
}
