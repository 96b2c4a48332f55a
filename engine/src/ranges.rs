//! Sorted, disjoint, half-open address ranges and the set operations the
//! dump planner needs, in time linear in the number of ranges.

pub type Range = (u64, u64);

/// Appends, joining with the last range when they touch.
pub fn push(out: &mut Vec<Range>, r: Range) {
    if r.0 >= r.1 {
        return;
    }
    match out.last_mut() {
        Some(last) if last.1 >= r.0 => last.1 = last.1.max(r.1),
        _ => out.push(r),
    }
}

pub fn intersect(a: &[Range], b: &[Range]) -> Vec<Range> {
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < a.len() && j < b.len() {
        let start = a[i].0.max(b[j].0);
        let end = a[i].1.min(b[j].1);
        push(&mut out, (start, end));
        if a[i].1 < b[j].1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

/// `a` minus `b`.
pub fn subtract(a: &[Range], b: &[Range]) -> Vec<Range> {
    let mut out = Vec::new();
    let mut j = 0;
    for &(mut start, end) in a {
        while j < b.len() && b[j].1 <= start {
            j += 1;
        }
        let mut k = j;
        while k < b.len() && b[k].0 < end {
            push(&mut out, (start, b[k].0.min(end)));
            start = start.max(b[k].1);
            k += 1;
        }
        push(&mut out, (start, end));
    }
    out
}

pub fn total(a: &[Range]) -> u64 {
    a.iter().map(|r| r.1 - r.0).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_operations() {
        let a = [(0, 10), (20, 30), (40, 50)];
        let b = [(5, 25), (45, 60)];
        assert_eq!(intersect(&a, &b), vec![(5, 10), (20, 25), (45, 50)]);
        assert_eq!(subtract(&a, &b), vec![(0, 5), (25, 30), (40, 45)]);
        assert_eq!(subtract(&a, &[]), a.to_vec());
        assert_eq!(intersect(&a, &[]), vec![]);
        assert_eq!(
            subtract(&[(0, 100)], &[(10, 20), (30, 40)]),
            vec![(0, 10), (20, 30), (40, 100)]
        );
        assert_eq!(total(&a), 30);
    }

    #[test]
    fn push_joins_touching_ranges() {
        let mut v = Vec::new();
        push(&mut v, (0, 4));
        push(&mut v, (4, 8));
        push(&mut v, (9, 9));
        push(&mut v, (10, 12));
        assert_eq!(v, vec![(0, 8), (10, 12)]);
    }
}
