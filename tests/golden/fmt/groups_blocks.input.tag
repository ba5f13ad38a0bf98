group "地域" {
tag "地域-北京" when city == "北京"


tag "地域-上海" when city in ["上海", "上海市"]
tag "地域-广州" when city == "广州" {description "广州" priority -5}
}
group "RFM" exclusive { tag "重要价值" when sum(orders.amount) >= 5000 tag "一般" when true }
group "空组" {}
group "空组2" exclusive {
}
tag "VIP手工" manual { description "运营手工维护，引擎不计算也不移除" owner "运营" }
tag "敏感" when age < 18 { sensitive review "法务" expires 90d priority +3 }
tag "空块" manual { }
tag "618活动" when exists(orders where created_at between datetime("2026-06-01T00:00:00") and datetime("2026-06-20T23:59:59")) {
    expires 2w
}
