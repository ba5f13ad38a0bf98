# 活动标签（《服务号用户管理》：标签继承、时效标签合并为历史活动参与者）
#
# 活动标签有时效：参加活动（活动期内下单）后保留 90 天，然后自动去掉，
# 并入“历史活动参与者”。标签继承：在 618 活动中买了护肤品的，再打
# “618-护肤品”，下次做护肤品活动直接从这部分人里筛选。
#
# 时效的写法：条件本身只在“首次参与后 90 天内”成立，历史活动参与者的条件
# 是“参与过，且首次参与已满 90 天”——两者按粉丝逐个精确互补，既不重叠
# 也没有空档。`expires 90d` 另外声明了标签的最长寿命：apply 从首次打标
# 起算 90 天，它总晚于（或等于）条件失效的时刻，所以只是兜底。之所以不只
# 靠 expires：expires 是 apply 保存的状态，tag("618活动") 的引用、
# preview、tagdsl test 和回溯某一天都看不到它，把时效写进条件，它们才
# 与 apply 的结果一致。修改 activity_keep 时，把各标签的 expires 一起改。
#
# 新增活动：复制一组 let 和 tag，改日期和名字，并把它加进历史活动参与者。

# -- 阈值（可调） --------------------------------------------------------------
let activity_keep = 90d  # 活动标签保留天数（与下面的 expires 保持一致）
let activity_618_start = date("2026-06-01")  # 618：6 月 1 日 0 点起……
let activity_618_end = date("2026-06-21")  # ……到 6 月 20 日 24 点（不含 6 月 21 日）
let activity_1111_start = date("2026-11-01")  # 双11：11 月 1 日 0 点起……
let activity_1111_end = date("2026-11-12")  # ……到 11 月 11 日 24 点
let activity_skincare = ["护肤", "护肤品"]  # 618-护肤品 的品类

# -- 派生条件：活动期内的首笔订单时间（没参加则缺失） -------------------------
let activity_618_first = first(orders.created_at where created_at >= activity_618_start and created_at < activity_618_end)
let activity_1111_first = first(orders.created_at where created_at >= activity_1111_start and created_at < activity_1111_end)

group "活动" {
  tag "618活动" when activity_618_first > now() - activity_keep {
    description "2026年618期间下过单，保留90天"
    expires 90d
    priority 10
  }

  tag "618-护肤品" when tag("618活动")
      and exists(orders where category in activity_skincare and created_at >= activity_618_start and created_at < activity_618_end) {
    description "618期间买过护肤品（随618活动一起到期）"
    expires 90d
    priority 10
  }

  tag "双11活动" when activity_1111_first > now() - activity_keep {
    description "2026年双11期间下过单，保留90天"
    expires 90d
    priority 10
  }

  tag "历史活动参与者" when activity_618_first <= now() - activity_keep
      or activity_1111_first <= now() - activity_keep {
    description "参加过活动，活动标签已到期"
    priority 5
  }
}
