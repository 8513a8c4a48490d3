package main

import (
	"fmt"
	"math"
	"strings"
)

// targetColors are the bar colours, by target.
var targetColors = map[target]string{
	targetDirect:         "#4c72b0",
	targetKproxyTx:       "#dd8452",
	targetKproxySession:  "#55a868",
	targetPgBouncerTx:    "#8172b3",
	targetFloorGoroutine: "#c44e52",
	targetFloorEpoll:     "#937860",
}

// targetColor is t's bar colour; the -baseline target has its own.
func targetColor(t target) string {
	if t.baseline() {
		return "#da8bc3"
	}
	return targetColors[t]
}

// Layout of the chart, in pixels.
const (
	barW      = 16.0 // one bar
	gapW      = 20.0 // between two scenarios
	left      = 80.0 // room for the y axis labels
	right     = 20.0
	headerH   = 80.0  // title, subtitle and legend
	panelTop  = 30.0  // panel title above the plot
	plotH     = 240.0 // bars
	labelH    = 100.0 // scenario names below the plot
	minPlotW  = 600.0
	fontSize  = 11
	labelFont = 9
)

// svg draws the median TPS of every scenario on every target as grouped
// bars: one panel per pgbench script, each with its own scale, one group
// per scenario, one bar per target. A cell that did not run shows "n/a"
// where its bar would be; one that failed every round shows "fails".
func (r *report) svg() string {
	type group struct {
		name string
		bars []*cell
	}
	type panel struct {
		script string
		groups []group
		max    float64
	}
	n := len(r.opts.targets)
	sums := map[*cell]summary{}
	var panels []*panel
	byScript := map[string]*panel{}
	for i := 0; i+n <= len(r.cells); i += n {
		bars := r.cells[i : i+n]
		s := bars[0].Scenario
		p := byScript[s.Script]
		if p == nil {
			p = &panel{script: s.Script}
			byScript[s.Script] = p
			panels = append(panels, p)
		}
		name := strings.TrimPrefix(s.String(), s.Script+" ")
		p.groups = append(p.groups, group{name: name, bars: bars})
		for _, c := range bars {
			if c.Skip == "" {
				sums[c] = summarize(c, r.ticks)
				p.max = max(p.max, sums[c].TPS)
			}
		}
	}
	groupW := float64(n)*barW + gapW
	plotW := minPlotW
	for _, p := range panels {
		plotW = max(plotW, float64(len(p.groups))*groupW)
	}
	panelH := panelTop + plotH + labelH
	width := left + plotW + right
	height := headerH + float64(len(panels))*panelH + 20

	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" font-family="sans-serif" font-size="%d">`+"\n",
		width, height, width, height, fontSize)
	fmt.Fprintf(&b, `<rect x="0" y="0" width="%.0f" height="%.0f" fill="white"/>`+"\n", width, height)
	mode := "quick"
	if r.opts.full {
		mode = "full"
	}
	fmt.Fprintf(&b, `<text x="%.0f" y="22" font-size="15" font-weight="bold">%s</text>`+"\n", left,
		xmlEscape(fmt.Sprintf("pgbench: median TPS over %s of %d s (%s mode)", plural(r.opts.rounds, "round"), r.opts.seconds, mode)))
	fmt.Fprintf(&b, `<text x="%.0f" y="40" fill="#555">%s</text>`+"\n", left,
		xmlEscape(fmt.Sprintf("kproxy %s, %s, %d CPUs (%s), pool size %d",
			r.machine.Commit, r.started.UTC().Format("2006-01-02 15:04 UTC"), r.machine.CPUs, r.machine.CPUModel, r.opts.poolSize)))
	lx := left
	for _, t := range r.opts.targets {
		fmt.Fprintf(&b, `<rect x="%.1f" y="52" width="12" height="12" fill="%s"/>`+"\n", lx, targetColor(t))
		fmt.Fprintf(&b, `<text x="%.1f" y="62">%s</text>`+"\n", lx+16, xmlEscape(string(t)))
		lx += 16 + float64(len(t))*7 + 24
	}

	for pi, p := range panels {
		top := headerH + float64(pi)*panelH + panelTop
		// Headroom for the value printed above the tallest bar.
		yMax, step := niceScale(p.max * 1.2)
		y := func(v float64) float64 { return top + plotH - v/yMax*plotH }
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" font-size="13" font-weight="bold">%s</text>`+"\n", left, top-10,
			xmlEscape("pgbench -b "+p.script))
		for v := 0.0; v <= yMax+step/2; v += step {
			fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n", left, y(v), left+plotW, y(v))
			fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="end">%s</text>`+"\n", left-6, y(v)+4, formatInt(int64(v)))
		}
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="black"/>`+"\n", left, top, left, top+plotH)
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="black"/>`+"\n", left, top+plotH, left+plotW, top+plotH)
		fmt.Fprintf(&b, `<text transform="translate(18 %.1f) rotate(-90)" text-anchor="middle">median TPS</text>`+"\n", top+plotH/2)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle" fill="#555">scenario: protocol (-M), clients (-c), -C when each transaction connects anew</text>`+"\n",
			left+plotW/2, top+plotH+labelH-10)

		labels := len(p.groups)*n <= 64
		// Few scenarios spread out, but not over the whole width.
		slot := max(groupW, min(plotW/float64(len(p.groups)), 2.5*groupW))
		start := left + (plotW-slot*float64(len(p.groups)))/2
		for gi, g := range p.groups {
			x0 := start + float64(gi)*slot + (slot-float64(n)*barW)/2
			for bi, c := range g.bars {
				x := x0 + float64(bi)*barW
				s, ran := sums[c]
				switch {
				case !ran:
					fmt.Fprintf(&b, `<text transform="translate(%.1f %.1f) rotate(-90)" font-size="%d" fill="#888">n/a</text>`+"\n",
						x+barW/2+3, top+plotH-4, labelFont)
				case s.OK == 0:
					fmt.Fprintf(&b, `<text transform="translate(%.1f %.1f) rotate(-90)" font-size="%d" fill="#c00">fails</text>`+"\n",
						x+barW/2+3, top+plotH-4, labelFont)
				default:
					h := s.TPS / yMax * plotH
					fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%s</title></rect>`+"\n",
						x+1, top+plotH-h, barW-2, h, targetColor(c.Target),
						xmlEscape(fmt.Sprintf("%s on %s: %s tps", c.Scenario, c.Target, formatInt(int64(s.TPS+0.5)))))
					if labels {
						text, fill := formatInt(int64(s.TPS+0.5)), "#333"
						if s.failing() {
							text, fill = text+" (fails)", "#c00"
						}
						fmt.Fprintf(&b, `<text transform="translate(%.1f %.1f) rotate(-90)" font-size="%d" fill="%s">%s</text>`+"\n",
							x+barW/2+3, top+plotH-h-3, labelFont, fill, xmlEscape(text))
					}
				}
			}
			cx := x0 + float64(n)*barW/2
			fmt.Fprintf(&b, `<text transform="translate(%.1f %.1f) rotate(-40)" text-anchor="end">%s</text>`+"\n",
				cx, top+plotH+14, xmlEscape(g.name))
		}
	}
	b.WriteString("</svg>\n")
	return b.String()
}

// niceScale returns an axis maximum at or above v and a tick step, both
// 1, 2 or 5 times a power of ten, with three to ten ticks.
func niceScale(v float64) (top, step float64) {
	if v <= 0 {
		return 1, 0.25
	}
	raw := v / 5
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 5, 10} {
		if step = m * mag; step >= raw {
			break
		}
	}
	return math.Ceil(v/step) * step, step
}

func xmlEscape(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", `"`, "&quot;", "'", "&apos;").Replace(s)
}

// plural writes n and noun, adding "s" unless n is 1.
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
