//! The scaling picture: ATTACH + DETACH time against backing size, both
//! backends, both entry layouts, as SVG.

use plotters::prelude::*;

use crate::report::size;
use crate::workloads::Layout;
use crate::Results;

struct Series {
    label: String,
    color: RGBColor,
    dashed: bool,
    /// (log2 bytes, milliseconds at the median)
    points: Vec<(f64, f64)>,
    /// (log2 bytes, milliseconds at the min)
    mins: Vec<(f64, f64)>,
}

fn series(r: &Results) -> Vec<Series> {
    let mut out = Vec::new();
    for b in &r.backends {
        for layout in Layout::ALL {
            let pts: Vec<_> = b
                .attach_detach
                .iter()
                .filter(|p| p.layout == layout)
                .collect();
            let mut points = Vec::new();
            let mut mins = Vec::new();
            let mut refused_from = None;
            for p in &pts {
                let x = (p.bytes as f64).log2();
                match (&p.cycle, &p.refused) {
                    (Some(s), _) => {
                        points.push((x, s.wall.median * 1e3));
                        mins.push((x, s.wall.min * 1e3));
                    }
                    (None, Some(_)) if refused_from.is_none() => refused_from = Some(p.bytes),
                    _ => {}
                }
            }
            let who = if b.backend == "gpuswap" {
                "gpuswap"
            } else {
                "QEMU C"
            };
            let mut label = format!("{who}, {}", layout.label());
            if let Some(from) = refused_from {
                label.push_str(&format!(" (refused from {})", size(from)));
            }
            let color = match (b.backend.as_str(), layout) {
                ("gpuswap", Layout::Scattered4k) => RGBColor(0x1f, 0x77, 0xb4),
                ("gpuswap", Layout::Contiguous2m) => RGBColor(0x2c, 0xa0, 0x2c),
                (_, Layout::Scattered4k) => RGBColor(0xd6, 0x27, 0x28),
                (_, Layout::Contiguous2m) => RGBColor(0xff, 0x7f, 0x0e),
            };
            out.push(Series {
                label,
                color,
                dashed: b.backend != "gpuswap",
                points,
                mins,
            });
        }
    }
    out
}

/// Renders the scaling curves as an SVG document.
pub fn attach_detach_svg(r: &Results) -> Result<String, String> {
    let all = series(r);
    let ys: Vec<f64> = all
        .iter()
        .flat_map(|s| s.points.iter().chain(&s.mins).map(|p| p.1))
        .filter(|y| *y > 0.0)
        .collect();
    let xs: Vec<f64> = all
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .collect();
    if ys.is_empty() {
        return Err("no ATTACH + DETACH points to plot".into());
    }
    let ymin = ys.iter().copied().fold(f64::INFINITY, f64::min).min(10.0) / 2.0;
    let ymax = ys.iter().copied().fold(0.0, f64::max).max(10.0) * 2.0;
    let xmin = xs.iter().copied().fold(f64::INFINITY, f64::min).floor() - 0.5;
    let xmax = xs.iter().copied().fold(0.0, f64::max).ceil() + 0.5;

    let mut svg = String::new();
    {
        let e = |e: &dyn std::fmt::Display| format!("plot: {e}");
        let root = SVGBackend::with_string(&mut svg, (960, 620)).into_drawing_area();
        root.fill(&WHITE).map_err(|x| e(&x))?;
        let (main, foot) = root.split_vertically(590);
        let mut chart = ChartBuilder::on(&main)
            .caption(
                "ATTACH_BACKING + DETACH_BACKING cycle vs backing size (median; dots: min)",
                ("sans-serif", 20),
            )
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(xmin..xmax, (ymin..ymax).log_scale())
            .map_err(|x| e(&x))?;
        chart
            .configure_mesh()
            .x_desc("backing size (log scale)")
            .y_desc("ms per ATTACH + DETACH (log scale)")
            .x_labels(((xmax - xmin) as usize + 1).min(20))
            .x_label_formatter(&|v| {
                if (v - v.round()).abs() < 1e-6 {
                    size(2f64.powf(v.round()) as u64)
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|v| format!("{v}"))
            .draw()
            .map_err(|x| e(&x))?;

        // The target: 1 GiB in 4 KiB entries under 10 ms.
        let grey = RGBColor(0x88, 0x88, 0x88);
        chart
            .draw_series(DashedLineSeries::new(
                vec![(xmin, 10.0), (xmax, 10.0)],
                4,
                4,
                grey.stroke_width(1),
            ))
            .map_err(|x| e(&x))?
            .label("10 ms (target for 1 GiB in 4 KiB entries)")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], grey));

        for s in &all {
            let style = s.color.stroke_width(2);
            let anno = if s.dashed {
                chart
                    .draw_series(DashedLineSeries::new(s.points.clone(), 8, 4, style))
                    .map_err(|x| e(&x))?
            } else {
                chart
                    .draw_series(LineSeries::new(s.points.clone(), style))
                    .map_err(|x| e(&x))?
            };
            let color = s.color;
            anno.label(s.label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
            chart
                .draw_series(s.mins.iter().map(|&p| Circle::new(p, 2, s.color.filled())))
                .map_err(|x| e(&x))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(|x| e(&x))?;
        foot.draw(&Text::new(
            format!(
                "{} run; {}; load average {} / {}",
                r.mode,
                r.machine.summary(),
                r.machine.loadavg_start,
                r.machine.loadavg_end
            ),
            (15, 8),
            ("sans-serif", 12),
        ))
        .map_err(|x| e(&x))?;
        root.present().map_err(|x| e(&x))?;
    }
    Ok(svg)
}
